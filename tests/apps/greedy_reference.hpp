#pragma once

// What a served greedy completion must equal, computed without the server: the engine's own
// greedy loop (as `duet generate --temperature 0` runs it) and the `duet generate` command's
// output. Used by the end-to-end tests of the embedded and the multi-process `duet serve`.

#include "engine/forward.hpp"
#include "engine/kv_cache.hpp"
#include "engine/model_file.hpp"
#include "engine/sampler.hpp"
#include "tests/support/models.hpp"

#include <catch2/catch.hpp>

#include <cstdio>
#include <span>
#include <string>
#include <vector>

namespace duet::test {

/// Greedy tokens of the engine alone on stories260K, as `duet generate --temperature 0`
/// computes them (stops after BOS/EOS, which it includes). The prompt's tokens go to
/// `prompt_out` when given.
inline std::vector<int> engine_greedy(const std::string& prompt_text, int steps,
                                      std::vector<int>* prompt_out = nullptr) {
  using namespace duet::engine;
  auto model = open_model(model_file("stories260K.bin"), model_file("tok512.bin"));
  const auto& cfg = model.weights->config;
  runner run(*model.weights, runner_options{1, 64});
  auto kv_cfg = kv_cache_config::for_model(cfg, 0, cfg.n_layers, 0, dtype::f32);
  kv_cfg.blocks_max = kv_cfg.blocks_for(1);
  kv_cache kv(kv_cfg);
  auto prompt = model.tok.encode(prompt_text, true);
  if (prompt_out) *prompt_out = prompt;
  const seq_id seq = 1;
  kv.seq_add(seq);
  kv.seq_reserve(seq, static_cast<int>(prompt.size()));
  std::vector<float> logits(static_cast<std::size_t>(cfg.vocab_size)); // [vocab]
  run.prefill(kv, seq, 0, prompt, logits);
  sampler greedy(sampler_config{}, cfg.vocab_size);
  std::vector<int> out;
  int pos = static_cast<int>(prompt.size()) - 1;
  while (static_cast<int>(out.size()) < steps) {
    int next = greedy.sample(logits);
    out.push_back(next);
    if (next == model.tok.bos_id() || next == model.tok.eos_id()) break;
    ++pos;
    kv.seq_reserve(seq, pos + 1);
    decode_item item{seq, next, pos};
    run.decode_batch(kv, std::span(&item, 1), logits);
  }
  return out;
}

/// `duet generate`'s greedy output on stories260K: the prompt, the completion, a newline.
inline std::string run_generate(const std::string& prompt, int steps) {
  std::string cmd = std::string{DUET_BINARY_DIR} + "/duet generate --model " +
                    model_file("stories260K.bin") + " --tokenizer " + model_file("tok512.bin") +
                    " --temperature 0 -n " + std::to_string(steps) + " --prompt '" + prompt +
                    "' 2>/dev/null";
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[4096];
  for (std::size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  REQUIRE(pclose(p) == 0);
  return out;
}

} // namespace duet::test
