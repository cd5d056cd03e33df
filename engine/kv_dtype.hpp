#pragma once

// The KV cache's element type as a user chooses it: "f32", "f16", or "auto", every command's
// default. Auto follows the weights' precision (llama.cpp stores K and V as f16 by default
// whatever the weights; vLLM's `--kv-cache-dtype auto` takes the model's own type):
//   - every matrix the forward pass multiplies is f32: f32 K and V. Greedy output is then
//     llama2.c run.c's, bit for bit (tests/engine compares against it).
//   - any matrix is f16 or q8_0: f16 K and V. The weights are already rounded to 16 bits or
//     fewer; f16 halves the KV pool's bytes (twice the sequences in the same memory) and the
//     bytes batched decode's attention reads every step and a disaggregated prefill sends.
// Every part of one cluster resolves the same way from the same model file, so prefill and
// decode agree; a segment of another dtype is refused on import (engine/kv_export.hpp), and a
// multi-process controller refuses nodes that disagree (actors/cluster.cpp).

#include "engine/dtype.hpp"

#include <string_view>

namespace duet::engine {

struct model_weights;

/// How the KV cache's element type is chosen.
enum class kv_dtype_choice : std::uint8_t {
  automatic, ///< f32 when every matmul weight is f32, else f16 (above)
  f32,
  f16,
};

/// "auto", "f32" or "f16". Throws engine_error(invalid_argument) naming the accepted values.
kv_dtype_choice parse_kv_dtype(std::string_view text);

/// The spelling parse_kv_dtype takes: "auto", "f32", "f16".
std::string_view kv_dtype_choice_name(kv_dtype_choice choice);

/// The element type `choice` stands for with the model `w` (f32 or f16).
dtype resolve_kv_dtype(kv_dtype_choice choice, const model_weights& w);

} // namespace duet::engine
