// Sampling after llama2.c run.c (argmax, temperature + softmax, top-p, multinomial, xorshift
// RNG), with top-k added; and stop conditions for streaming.
#include "engine/sampler.hpp"

#include "engine/error.hpp"
#include "engine/kernels.hpp"

#include <algorithm>

namespace duet::engine {

int sample_argmax(std::span<const float> logits) {
  if (logits.empty()) return -1;
  return kernels::argmax(logits.data(), static_cast<int>(logits.size()));
}

sampler::sampler(const sampler_config& config, int vocab_size)
    : config_(config), rng_state_(config.seed == 0 ? 0x9E3779B97F4A7C15ull : config.seed) {
  if (vocab_size <= 0)
    throw engine_error(engine_errc::invalid_argument,
                       "sampler: vocab_size is " + std::to_string(vocab_size));
  if (!(config.temperature >= 0.0f))
    throw engine_error(engine_errc::invalid_argument, "sampler: temperature must be >= 0");
  if (config.top_k < 0) throw engine_error(engine_errc::invalid_argument, "sampler: top_k < 0");
  scratch_.resize(static_cast<std::size_t>(vocab_size));
}

float sampler::random_f32() {
  // run.c's xorshift64* (random_u32), top 24 bits as a float in [0, 1)
  rng_state_ ^= rng_state_ >> 12;
  rng_state_ ^= rng_state_ << 25;
  rng_state_ ^= rng_state_ >> 27;
  auto u32 = static_cast<std::uint32_t>((rng_state_ * 0x2545F4914F6CDD1Dull) >> 32);
  return static_cast<float>(u32 >> 8) / 16777216.0f;
}

int sampler::sample(std::span<float> logits) {
  const int n = static_cast<int>(std::min(logits.size(), scratch_.size()));
  if (config_.temperature == 0.0f) return sample_argmax(logits.first(static_cast<std::size_t>(n)));
  for (int i = 0; i < n; ++i) logits[static_cast<std::size_t>(i)] /= config_.temperature;
  kernels::softmax(logits.data(), n);
  const float coin = random_f32();
  const bool top_p = config_.top_p > 0.0f && config_.top_p < 1.0f;
  const bool top_k = config_.top_k > 0 && config_.top_k < n;
  if (!top_p && !top_k) { // run.c sample_mult
    float cdf = 0.0f;
    for (int i = 0; i < n; ++i) {
      cdf += logits[static_cast<std::size_t>(i)];
      if (coin < cdf) return i;
    }
    return n - 1;
  }
  // Candidates, most likely first. run.c's top-p drops tokens below (1 - p) / (n - 1) before
  // sorting (they cannot be in the nucleus); with top-k we keep exactly the k best.
  auto by_prob = [](const candidate& a, const candidate& b) {
    return a.prob > b.prob || (a.prob == b.prob && a.index < b.index);
  };
  int n0 = 0;
  const float cutoff = top_p && !top_k ? (1.0f - config_.top_p) / static_cast<float>(n - 1) : 0.0f;
  for (int i = 0; i < n; ++i) {
    float p = logits[static_cast<std::size_t>(i)];
    if (p >= cutoff) scratch_[static_cast<std::size_t>(n0++)] = candidate{p, i};
  }
  auto first = scratch_.begin(), last = scratch_.begin() + n0;
  if (top_k) {
    std::partial_sort(first, first + config_.top_k, last, by_prob);
    n0 = config_.top_k;
  } else {
    std::sort(first, last, by_prob);
  }
  float cumulative = 0.0f;
  int last_idx = n0 - 1;
  for (int i = 0; i < n0; ++i) {
    cumulative += scratch_[static_cast<std::size_t>(i)].prob;
    if (top_p && cumulative > config_.top_p) {
      last_idx = i;
      break;
    }
  }
  const float r = coin * cumulative;
  float cdf = 0.0f;
  for (int i = 0; i <= last_idx; ++i) {
    cdf += scratch_[static_cast<std::size_t>(i)].prob;
    if (r < cdf) return scratch_[static_cast<std::size_t>(i)].index;
  }
  return scratch_[static_cast<std::size_t>(last_idx)].index;
}

// -- stop conditions -------------------------------------------------------------------------

stop_checker::stop_checker(stop_config config) : config_(std::move(config)) {
  std::erase_if(config_.stop_strings, [](const std::string& s) { return s.empty(); });
}

stop_reason stop_checker::add(int token, std::string_view text) {
  if (reason_ != stop_reason::none) return reason_;
  ++generated_;
  if (std::find(config_.stop_tokens.begin(), config_.stop_tokens.end(), token) !=
      config_.stop_tokens.end())
    return reason_ = stop_reason::stop_token;
  pending_.append(text);
  // The earliest stop string in the pending text ends generation; the text stops before it.
  std::size_t cut = std::string::npos;
  for (const auto& s : config_.stop_strings) cut = std::min(cut, pending_.find(s));
  if (cut != std::string::npos) {
    pending_.resize(cut);
    return reason_ = stop_reason::stop_string;
  }
  if (config_.max_tokens > 0 && generated_ >= config_.max_tokens)
    return reason_ = stop_reason::max_tokens;
  return stop_reason::none;
}

std::string stop_checker::take_ready() {
  std::size_t keep = 0; // longest tail that is a proper prefix of some stop string
  if (reason_ == stop_reason::none) {
    for (const auto& s : config_.stop_strings)
      for (std::size_t len = std::min(s.size() - 1, pending_.size()); len > keep; --len)
        if (pending_.compare(pending_.size() - len, len, s, 0, len) == 0) {
          keep = len;
          break;
        }
  }
  std::string ready = pending_.substr(0, pending_.size() - keep);
  pending_.erase(0, pending_.size() - keep);
  return ready;
}

} // namespace duet::engine
