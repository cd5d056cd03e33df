#pragma once

// Random-weight models of standard Llama shapes, for benchmarks at sizes no bundled model has.
// Weights are N(0, stddev) from a seeded generator (deterministic per seed, tensor and row, so
// the output does not depend on how rows are chunked), norm weights are 1: activations stay
// small and generation is numerically sane, if meaningless. The tokenizer is synthetic too
// (<unk>, <s>, </s>, 256 byte-fallback pieces, then filler pieces of printable ASCII), so the
// GGUF file is self-contained. Written streaming: a 4 GB model is never in memory at once.

#include "engine/gguf_export.hpp"
#include "engine/gguf_format.hpp"
#include "engine/model_weights.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace duet::engine {

struct synth_shape {
  std::string name;
  std::string description;
  model_config config;
  bool tied_classifier = true; ///< llama2.c models share it; TinyLlama has its own output
};

/// stories15M, stories110M (llama2.c's TinyStories models), llama-1b (TinyLlama-1.1B's shape),
/// and "tiny" (a few hundred KB, for tests).
const std::vector<synth_shape>& synth_shapes();

/// The shape called `name`, or nullopt.
std::optional<synth_shape> find_synth_shape(std::string_view name);

/// A synthetic SentencePiece-style vocabulary of `vocab_size` (>= 259) pieces: ids 0..2 are
/// <unk>, <s>, </s>; 3..258 the byte pieces <0x00>..<0xFF>; then the printable ASCII
/// characters, then 2-, 3-, 4-grams over " etaoinshrdlucmfwypvbgkjqxz" until full, each scored
/// minus its rank so that every n-gram can be built by merging a shorter piece and a letter.
gguf_vocab synth_vocab(int vocab_size);

struct synth_options {
  std::uint64_t seed = 1;
  float stddev = 0.02f; ///< of every matrix weight
};

/// Writes a random-weight `shape` model as a GGUF file of `file_type` (norms f32).
/// Throws engine_error (io_error when the file cannot be written).
void write_synth_model(const std::string& path, const synth_shape& shape, dtype file_type,
                       const synth_options& options, const progress_fn& progress = {});

} // namespace duet::engine
