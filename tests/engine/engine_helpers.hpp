#pragma once

// Shared by the engine tests: load stories260K + tok512 once, and greedy generation through
// the engine with run.c's loop semantics (steps = positions, stop on BOS).

#include "engine/error.hpp"
#include "engine/forward.hpp"
#include "engine/kv_cache.hpp"
#include "engine/llama2c.hpp"
#include "engine/sampler.hpp"
#include "engine/tokenizer.hpp"
#include "tests/support/models.hpp"

#include <vector>

namespace duet::test {

inline const engine::model_weights& stories260k() {
  static const engine::model_weights w =
      engine::load_llama2c_checkpoint(model_file("stories260K.bin"));
  return w;
}

inline const engine::tokenizer& tok512() {
  static const engine::tokenizer t = engine::load_llama2c_tokenizer(model_file("tok512.bin"));
  return t;
}

/// A cache for every layer of `w` with room for `sequences` full-length sequences.
inline engine::kv_cache_config full_cache(const engine::model_weights& w, int sequences,
                                          engine::dtype type = engine::dtype::f32,
                                          int block_tokens = 16) {
  auto c =
      engine::kv_cache_config::for_model(w.config, 0, w.config.n_layers, 0, type, block_tokens);
  c.blocks_max = c.blocks_for(sequences);
  return c;
}

/// Decodes greedily from logits of position `last_pos` of `seq` until position `steps`
/// or BOS, as run.c's generate() (tokens after the prompt are appended to `out`).
inline void continue_greedy(engine::runner& r, engine::kv_cache& kv, engine::seq_id seq,
                            std::vector<float>& logits, int last_pos, int steps,
                            std::vector<int>& out, int bos = 1) {
  int p = last_pos;
  for (;;) {
    int next = engine::sample_argmax(logits);
    if (next == bos) break;
    out.push_back(next);
    if (p + 1 >= steps) break;
    REQUIRE(kv.seq_reserve(seq, p + 2));
    engine::decode_item item{seq, next, p + 1};
    r.decode_batch(kv, std::span(&item, 1), logits);
    ++p;
  }
}

/// Prompt (BOS first) prefilled in one call, then greedy decode: every token after the first.
inline std::vector<int> engine_greedy(engine::runner& r, engine::kv_cache& kv, engine::seq_id seq,
                                      const std::vector<int>& prompt, int steps) {
  REQUIRE(kv.seq_add(seq));
  REQUIRE(kv.seq_reserve(seq, static_cast<int>(prompt.size())));
  std::vector<float> logits(static_cast<std::size_t>(r.config().vocab_size));
  r.prefill(kv, seq, 0, prompt, logits);
  std::vector<int> out(prompt.begin() + 1, prompt.end());
  continue_greedy(r, kv, seq, logits, static_cast<int>(prompt.size()) - 1, steps, out);
  return out;
}

} // namespace duet::test
