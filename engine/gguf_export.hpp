#pragma once

// Writing `llama`-architecture GGUF files: the metadata keys llama.cpp's own converter writes
// (general.*, llama.*, tokenizer.ggml.*), tensors by llama.cpp's names, each produced row
// block by row block through a callback so that `duet convert` (rows from a mapped model) and
// `duet synth` (rows from a seeded generator) both stream to disk.

#include "engine/gguf_format.hpp"
#include "engine/model_weights.hpp"
#include "engine/tokenizer.hpp"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace duet::engine {

/// Fills rows [row0, row0 + n) of a tensor as f32 into out[n][cols].
using row_fill = std::function<void(std::int64_t row0, std::int64_t n, float* out)>;

/// One tensor to write: its llama.cpp name, row-major [rows][cols] shape (GGML ne = [cols, rows],
/// or [cols] for rows == 1 vectors), the type to store it as, and where its values come from.
struct tensor_plan {
  std::string name;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  bool vector = false; ///< 1-D (norm weights)
  dtype type = dtype::f32;
  row_fill fill;
  /// Optional source already in `type`: its bytes are copied as they are (no re-encoding).
  const tensor_view* same_type_source = nullptr;
};

/// Progress messages ("tensor 12/201 blk.1.attn_q.weight [2048][2048] q8_0 ...").
using progress_fn = std::function<void(const std::string& line)>;

/// Type a `file_type` model stores tensor [rows][cols] as: norms (vectors) stay f32 as in
/// llama.cpp; q8_0 needs cols % 32 == 0 and falls back to f16 otherwise (ffn_down of
/// stories260K has 172 columns).
dtype storage_type(dtype file_type, std::int64_t cols, bool vector);

/// The tensor list of a llama model of `config`, in llama.cpp's order (token_embd,
/// output_norm, output unless `tied_classifier`, then per block attn_q, attn_k, attn_v,
/// attn_output, attn_norm, ffn_gate, ffn_down, ffn_up, ffn_norm), with types from
/// storage_type and no fill set.
std::vector<tensor_plan> llama_tensor_plans(const model_config& config, dtype file_type,
                                            bool tied_classifier);

/// Writes a GGUF v3 `llama` file: metadata from config + vocab (pieces in llama2.c spelling,
/// written with U+2581 for spaces), then every plan's data, streaming. Throws engine_error.
void write_llama_gguf(const std::string& path, const model_config& config, const gguf_vocab& vocab,
                      dtype file_type, std::vector<tensor_plan> plans,
                      const progress_fn& progress = {});

/// Plans that read each tensor of `weights` (dequantizing to f32 when the stored type
/// differs from the target). A classifier that aliases the embedding is not written: readers
/// (llama.cpp's included) tie output to token_embd when output.weight is absent.
std::vector<tensor_plan> plans_from_weights(const model_weights& weights, dtype file_type);

/// A gguf_vocab from a llama2.c-style tokenizer, typed as llama.cpp's llama2c converter does:
/// id 0 -> "<unk>" (unknown), BOS -> "<s>" and EOS -> "</s>" (control), "<0xXX>" pieces
/// (byte), every other piece normal.
gguf_vocab vocab_from_tokenizer(const tokenizer& tok);

/// Converts a llama2.c checkpoint + tokenizer into a GGUF file of `file_type`.
void convert_llama2c_to_gguf(const std::string& model_path, const std::string& tokenizer_path,
                             const std::string& out_path, dtype file_type,
                             const progress_fn& progress = {});

} // namespace duet::engine
