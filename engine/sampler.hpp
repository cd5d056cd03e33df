#pragma once

// Next-token sampling as llama2.c run.c does it (greedy = argmax with the lowest index on ties;
// temperature, then top-p nucleus or plain multinomial, with run.c's xorshift RNG), plus top-k.
// Deterministic for a given seed: the RNG is the only state and it is ours, not the process's.

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace duet::engine {

struct sampler_config {
  float temperature = 0.0f; ///< 0 = greedy (argmax)
  float top_p = 1.0f;       ///< nucleus mass in (0, 1); >= 1 or <= 0 disables
  int top_k = 0;            ///< keep the k most likely tokens; 0 disables
  std::uint64_t seed = 0;   ///< RNG seed (0 is mapped to a fixed non-zero value)
};

/// Index of the largest value, lowest index on ties (run.c's argmax). -1 for an empty span.
int sample_argmax(std::span<const float> logits);

class sampler {
public:
  /// Scratch for `vocab_size` candidates is allocated here, never per sample.
  sampler(const sampler_config& config, int vocab_size);

  /// Picks the next token from `logits` (size vocab_size), which it overwrites (scaled and
  /// turned into probabilities when temperature > 0).
  int sample(std::span<float> logits);

  const sampler_config& config() const { return config_; }
  /// RNG state, to resume a request elsewhere with exactly the same draws.
  std::uint64_t rng_state() const { return rng_state_; }
  void set_rng_state(std::uint64_t state) { rng_state_ = state; }

private:
  struct candidate {
    float prob;
    int index;
  };
  float random_f32();

  sampler_config config_;
  std::uint64_t rng_state_;
  std::vector<candidate> scratch_; ///< [vocab_size]
};

// -- stop conditions -------------------------------------------------------------------------

enum class stop_reason { none, stop_token, stop_string, max_tokens };

constexpr const char* stop_reason_name(stop_reason r) {
  switch (r) {
  case stop_reason::none:
    return "none";
  case stop_reason::stop_token:
    return "stop_token";
  case stop_reason::stop_string:
    return "stop_string";
  case stop_reason::max_tokens:
    return "max_tokens";
  }
  return "?";
}

struct stop_config {
  std::vector<int> stop_tokens;          ///< e.g. EOS (and BOS for llama2.c models, as run.c)
  std::vector<std::string> stop_strings; ///< generation ends where one appears in the text
  int max_tokens = 0;                    ///< generated tokens at most; 0 = no limit
};

/// Tracks generated tokens and text against a stop_config, and hands out text that is safe to
/// stream: a tail that could still become a stop string is held back until it cannot.
class stop_checker {
public:
  explicit stop_checker(stop_config config);

  /// Feeds one generated token and its decoded text. Returns why generation must stop after
  /// it, or none. A stop token contributes no text; a stop string is cut from the text.
  stop_reason add(int token, std::string_view text);

  /// Text ready to emit since the last call (everything once stopped).
  std::string take_ready();

  int generated() const { return generated_; }
  stop_reason reason() const { return reason_; }

private:
  stop_config config_;
  std::string pending_; ///< text not yet handed out
  int generated_ = 0;
  stop_reason reason_ = stop_reason::none;
};

} // namespace duet::engine
