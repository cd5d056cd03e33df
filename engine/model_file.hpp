#pragma once

// One entry point for every model file duet serves: open_model() detects the format by its
// magic bytes ("GGUF" -> GGUF reader with the tokenizer from the file's metadata; anything else
// -> a llama2.c checkpoint, which needs the separate llama2.c tokenizer file). `duet generate`,
// the fabric's nodes and the server all load models through here.

#include "engine/model_weights.hpp"
#include "engine/tokenizer.hpp"

#include <memory>
#include <string>

namespace duet::engine {

/// On-disk format of a model file.
enum class model_format { gguf, llama2c };

/// A model ready to run: weights (memory-mapped, shared by every runner that uses them) and
/// the tokenizer that goes with them.
struct loaded_model {
  std::shared_ptr<const model_weights> weights;
  tokenizer tok;
  model_format format = model_format::llama2c;
  /// Whether encode() should prepend BOS for this model (GGUF tokenizer.ggml.add_bos_token;
  /// always true for llama2.c, as run.c does).
  bool add_bos = true;
};

/// Format of the file at `path` by its first four bytes. Throws engine_error(io_error) if it
/// cannot be read.
model_format detect_model_format(const std::string& path);

/// Opens `model_path` (GGUF or llama2.c). For a llama2.c checkpoint `tokenizer_path` is
/// required (engine_error(invalid_argument) naming both when empty) and its vocabulary size
/// must match the checkpoint's; for a GGUF file it is ignored (the file carries its own
/// tokenizer). Throws engine_error naming the file.
loaded_model open_model(const std::string& model_path, const std::string& tokenizer_path = "");

} // namespace duet::engine
