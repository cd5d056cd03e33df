#pragma once

// llama2.c checkpoints ("legacy" version 0, as written by Karpathy's export.py --version 0):
// a 7 x int32 header then float32 tensors in a fixed order (see ../shared/models/README.md).
// The file is memory-mapped; every tensor_view points into the mapping (no weight copy).

#include "engine/model_weights.hpp"

#include <cstddef>
#include <string>

namespace duet::engine {

/// Bytes a legacy llama2.c checkpoint with this header must have (header + every tensor,
/// including the unused RoPE tables and, for unshared classifiers, wcls).
std::size_t llama2c_expected_bytes(const model_config& config, bool shared_classifier);

/// Loads a llama2.c checkpoint by mmap. Throws engine_error:
/// - io_error: the file cannot be opened or mapped;
/// - bad_format: truncated header, non-positive or absurd hyperparameters (dim not divisible
///   by n_heads, n_heads not a multiple of n_kv_heads, odd head_size, sizes that overflow),
///   or a file shorter/longer than the header implies — the message names the file, the tensor
///   or header field, its offset, and expected vs found.
model_weights load_llama2c_checkpoint(const std::string& path);

} // namespace duet::engine
