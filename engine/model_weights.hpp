#pragma once

// The in-memory picture of a Llama-family model: hyperparameters plus read-only views of every
// weight tensor. Loaders (llama2.c, GGUF) fill it from a memory-mapped file without copying;
// the forward pass only reads it. Shapes use llama2.c's convention: a matrix is row-major
// [out][in] (`y = W x`), so one row is one output's weights, contiguous.

#include "engine/dtype.hpp"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace duet::engine {

/// Hyperparameters of a Llama-2-style decoder.
struct model_config {
  int dim = 0;        ///< transformer width
  int hidden_dim = 0; ///< FFN inner width
  int n_layers = 0;   ///< decoder blocks
  int n_heads = 0;    ///< query heads
  int n_kv_heads = 0; ///< key/value heads (grouped-query attention when < n_heads)
  int vocab_size = 0; ///< tokens
  int seq_len = 0;    ///< maximum context (positions)
  float rms_eps = 1e-5f;
  float rope_theta = 10000.0f;

  int head_size() const { return dim / n_heads; }
  int kv_dim() const { return n_kv_heads * head_size(); }
};

/// A read-only 2-D (or 1-D with rows == 1) tensor: `rows` rows of `cols` values of `type`,
/// each row row_bytes(type, cols) bytes, rows contiguous. Points into mapped or owned storage.
struct tensor_view {
  const void* data = nullptr;
  dtype type = dtype::f32;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  /// q8_0 only: the same rows repacked for the integer kernels (engine/q8_pack.hpp), or null.
  /// The kernels read this instead of `data` for the rows it holds.
  const std::uint8_t* q8_packed = nullptr;

  std::size_t bytes() const { return static_cast<std::size_t>(rows) * row_bytes(type, cols); }
  const std::uint8_t* row(std::int64_t r) const {
    return static_cast<const std::uint8_t*>(data) +
           static_cast<std::size_t>(r) * row_bytes(type, cols);
  }
};

/// Weights of one decoder block. Norm weights are always f32 vectors [dim].
struct layer_weights {
  tensor_view rms_att; ///< [dim]
  tensor_view wq;      ///< [n_heads * head_size][dim]
  tensor_view wk;      ///< [n_kv_heads * head_size][dim]
  tensor_view wv;      ///< [n_kv_heads * head_size][dim]
  tensor_view wo;      ///< [dim][n_heads * head_size]
  tensor_view rms_ffn; ///< [dim]
  tensor_view w1;      ///< [hidden_dim][dim]  gate
  tensor_view w2;      ///< [dim][hidden_dim]  down
  tensor_view w3;      ///< [hidden_dim][dim]  up
};

/// A loaded model. `storage` keeps the mapping (or owned buffers) alive for the views.
struct model_weights {
  model_config config;
  tensor_view token_embedding;       ///< [vocab_size][dim]
  std::vector<layer_weights> layers; ///< [n_layers]
  tensor_view rms_final;             ///< [dim]
  tensor_view classifier;            ///< [vocab_size][dim] (may alias token_embedding)
  std::shared_ptr<const void> storage;
  /// The q8_0 matrices repacked for the kernels (pack_q8_0_weights), or null.
  std::shared_ptr<const void> packed;
  std::string source_path; ///< file it came from, for messages

  /// Bytes of weights one decode step reads (every matrix once; the embedding row is negligible).
  std::size_t decode_bytes_per_token() const;
};

} // namespace duet::engine
