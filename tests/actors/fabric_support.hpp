#pragma once

// Helpers for the fabric tests: the reference generation (one engine, no actors), a cluster
// config for stories260K, and a collector that waits (without spinning) for a request's end
// and checks the completion_service contract (positions contiguous from the prompt length,
// exactly one on_done, last).

#include "actors/cluster.hpp"
#include "engine/forward.hpp"
#include "engine/model_file.hpp"
#include "engine/sampler.hpp"
#include "tests/support/models.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace duet::test {

inline actors::cluster_config stories_config() {
  actors::cluster_config cfg;
  cfg.model_path = model_file("stories260K.bin");
  cfg.tokenizer_path = model_file("tok512.bin");
  cfg.prefill_chunk_tokens = 8; // several chunks per prompt: exercises chunking and streaming
  cfg.engine_threads = 1;
  cfg.caf_workers = 2;
  return cfg;
}

/// Greedy tokens after `prompt` from one engine runner of `model` with K and V of `kv_type`,
/// stopping at EOS/BOS as run.c does: the reference every fabric path must reproduce exactly.
inline std::vector<int> reference_tokens(const engine::loaded_model& model,
                                         const std::vector<int>& prompt, int max_tokens,
                                         engine::dtype kv_type, bool stop_at_eos = true) {
  const auto& cfg = model.weights->config;
  engine::runner run{*model.weights, {1, 64}};
  auto kvc = engine::kv_cache_config::for_model(cfg, 0, cfg.n_layers, 0, kv_type);
  kvc.blocks_max = kvc.blocks_for(1);
  engine::kv_cache kv{kvc};
  kv.seq_add(1);
  REQUIRE(kv.seq_reserve(1, int(prompt.size()) + max_tokens));
  std::vector<float> logits(std::size_t(cfg.vocab_size));
  run.prefill(kv, 1, 0, prompt, logits);
  std::vector<int> out;
  int pos = int(prompt.size());
  int token = engine::sample_argmax(logits);
  while (true) {
    if (stop_at_eos && (token == model.tok.eos_id() || token == model.tok.bos_id())) break;
    out.push_back(token);
    if (int(out.size()) >= max_tokens) break;
    engine::decode_item item{1, token, pos};
    run.decode_batch(kv, std::span<const engine::decode_item>(&item, 1), logits);
    token = engine::sample_argmax(logits);
    ++pos;
  }
  return out;
}

/// The bundled stories260K (llama2.c, f32 weights), loaded once.
inline const engine::loaded_model& stories_model() {
  static auto model = engine::open_model(model_file("stories260K.bin"), model_file("tok512.bin"));
  return model;
}

/// reference_tokens on stories260K with f32 K and V (what auto gives its f32 weights).
inline std::vector<int> reference_tokens(const std::vector<int>& prompt, int max_tokens,
                                         bool stop_at_eos = true) {
  return reference_tokens(stories_model(), prompt, max_tokens, engine::dtype::f32, stop_at_eos);
}

/// What one request produced.
struct outcome {
  std::vector<int> tokens;
  std::vector<int> positions;
  actors::completion_result result;
  int done_calls = 0;
  bool token_after_done = false;
};

/// Collects a request's callbacks; wait() blocks on a condition variable until on_done.
class collector {
public:
  actors::completion_callbacks callbacks() {
    actors::completion_callbacks cb;
    cb.on_token = [this](int position, int token) {
      std::lock_guard g{mutex_};
      if (out_.done_calls > 0) out_.token_after_done = true;
      out_.positions.push_back(position);
      out_.tokens.push_back(token);
    };
    cb.on_done = [this](const actors::completion_result& r) {
      std::lock_guard g{mutex_};
      out_.result = r;
      ++out_.done_calls;
      done_.notify_all();
    };
    return cb;
  }

  /// Waits up to `seconds` for on_done; fails the test on timeout.
  outcome wait(int seconds = 60) {
    std::unique_lock lock{mutex_};
    bool ok =
        done_.wait_for(lock, std::chrono::seconds(seconds), [this] { return out_.done_calls > 0; });
    REQUIRE(ok);
    return out_;
  }

private:
  std::mutex mutex_;
  std::condition_variable done_;
  outcome out_;
};

inline actors::completion_request
make_request(std::string id, std::vector<int> prompt, int max_tokens,
             actors::placement_mode mode = actors::placement_mode::disaggregated) {
  actors::completion_request r;
  r.request_id = std::move(id);
  r.prompt_tokens = std::move(prompt);
  r.max_tokens = max_tokens;
  r.placement = mode;
  return r;
}

/// Positions must run prompt_len, prompt_len + 1, ... with no gap and no repeat.
inline void check_positions(const outcome& o, int prompt_len) {
  for (std::size_t i = 0; i < o.positions.size(); ++i)
    REQUIRE(o.positions[i] == prompt_len + int(i));
  CHECK(o.done_calls == 1);
  CHECK_FALSE(o.token_after_done);
}

/// A request that survived faults: no error, exactly the fault-free tokens, positions
/// contiguous after the prompt, done once.
inline void check_fault_free(const outcome& o, const std::vector<int>& prompt,
                             const std::vector<int>& expected) {
  INFO(o.result.error_message);
  CHECK(o.result.error == actors::service_error::none);
  CHECK(o.tokens == expected);
  check_positions(o, int(prompt.size()));
}

/// Waits (sleeping) until the cluster's KV blocks are all back, up to a bound.
inline std::size_t settled_kv_blocks(actors::cluster& c) {
  for (int i = 0; i < 200 && c.kv_blocks_in_use() != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  return c.kv_blocks_in_use();
}

} // namespace duet::test
