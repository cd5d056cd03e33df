#pragma once

// The Llama-2 forward pass, after llama2.c run.c: RMSNorm (eps from the config), RoPE on
// adjacent pairs, grouped-query attention over a paged KV cache, SwiGLU FFN, residual adds,
// final RMSNorm and classifier. Split in pieces so the fabric can place them apart:
//
//   embed(tokens)                          -> x [n][dim]
//   forward_layers(kv, seq, pos0, n, a, b, x)  x through layers [a, b), writing their KV
//   logits(x rows)                         -> [n][vocab]
//   decode_batch(kv, items, logits)        one token for each of many sequences, all layers
//
// Prefill of many tokens is matrix-matrix (each weight row read once per chunk of up to
// tokens_max tokens); matmuls are parallel over output rows on a persistent thread pool.
// Every buffer is allocated in the constructor: the forward pass never allocates.
// A runner is driven by one thread at a time; several runners may share one model_weights.

#include "engine/kv_cache.hpp"
#include "engine/model_weights.hpp"
#include "engine/thread_pool.hpp"

#include <memory>
#include <span>
#include <vector>

namespace duet::engine {

struct runner_options {
  int threads = 1;     ///< compute threads, the caller included (>= 1)
  int tokens_max = 64; ///< rows per forward step (prefill chunk, decode batch); sizes workspace
};

/// One sequence's next token in a decode batch: `token` at position `pos` (== its KV length).
struct decode_item {
  seq_id seq = 0;
  int token = 0;
  int pos = 0;
};

class runner {
public:
  /// Keeps a copy of `weights` (views + the shared storage, no weight copy). Throws
  /// engine_error(invalid_argument) for options out of range or an inconsistent model
  /// (tensor shapes that do not match the config, an unsupported weight type).
  explicit runner(const model_weights& weights, runner_options options = {});
  ~runner();
  runner(const runner&) = delete;
  runner& operator=(const runner&) = delete;

  const model_config& config() const { return weights_.config; }
  const model_weights& weights() const { return weights_; }
  int tokens_max() const { return options_.tokens_max; }
  int threads() const { return pool_.threads(); }

  /// Token embeddings: x[i] = row tokens[i] of the embedding table (dequantized to f32).
  /// x.size() >= tokens.size() * dim. Throws invalid_argument for a token out of range.
  void embed(std::span<const int> tokens, std::span<float> x /*[n][dim]*/) const;

  /// Runs hidden states x (n_tokens rows, positions pos0 .. pos0+n_tokens-1 of `seq`) through
  /// layers [first_layer, last_layer), in place, writing those layers' K/V into `kv`.
  /// `kv` must hold the layers, `seq` must have blocks for pos0 + n_tokens, and every layer's
  /// length must be >= pos0 (no gap). Any n_tokens (chunked by tokens_max internally).
  /// Throws engine_error on a violated precondition, before changing anything.
  void forward_layers(kv_cache& kv, seq_id seq, int pos0, int n_tokens, int first_layer,
                      int last_layer, std::span<float> x /*[n_tokens][dim], in/out*/);

  /// Final RMSNorm + classifier of each row of x: out[i] = logits of x[i]. rows = x.size()/dim.
  void logits(std::span<const float> x /*[rows][dim]*/, std::span<float> out /*[rows][vocab]*/);

  /// One token for each item (distinct sequences), all layers, batched: each weight matrix is
  /// read once for the whole batch. logits_out[i] = next-token logits of items[i]. Each
  /// sequence must have length == pos and blocks for pos + 1. Any batch size (chunked).
  void decode_batch(kv_cache& kv, std::span<const decode_item> items,
                    std::span<float> logits_out /*[n][vocab]*/);

  /// Convenience: embed + all layers + logits of the last token (the usual prefill).
  void prefill(kv_cache& kv, seq_id seq, int pos0, std::span<const int> tokens,
               std::span<float> last_logits /*[vocab]*/);

private:
  struct workspace;
  void check_batch(const kv_cache& kv, int first_layer, int last_layer) const;
  /// fn(i) for rows i in [0, n): on the pool once there are a few rows (n >= 4), else on this
  /// thread (a pool dispatch costs more than a row-wise step on one row).
  template <class Fn>
  void each_row(int n, Fn&& fn) {
    each_rows(n, [&](int b, int e) {
      for (int i = b; i < e; ++i) fn(i);
    });
  }
  /// fn(b, e) over ranges of rows that cover [0, n) once, split as each_row splits them (for
  /// steps that do several rows at once).
  template <class Fn>
  void each_rows(int n, Fn&& fn) {
    if (pool_.threads() == 1 || n < 4) {
      if (n > 0) fn(0, n);
      return;
    }
    pool_.parallel_for(n, [&](std::int64_t b, std::int64_t e, int) {
      fn(static_cast<int>(b), static_cast<int>(e));
    });
  }
  /// Runs the n rows staged in the workspace (row_seq/row_pos/row_table) through layers.
  /// `one_sequence`: the rows are one sequence at consecutive positions (a prefill chunk).
  void layers_chunk(kv_cache& kv, int n, int first_layer, int last_layer, float* x,
                    bool one_sequence);

  model_weights weights_;
  runner_options options_;
  thread_pool pool_;
  std::unique_ptr<workspace> ws_;
};

} // namespace duet::engine
