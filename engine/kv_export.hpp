#pragma once

// KV export / import: the K and V of ONE layer for ONE token range of ONE sequence as a
// contiguous byte segment, so prefill (one cache, maybe one process) can hand its KV to decode
// (another cache, maybe another host) layer by layer.
//
// Segment byte layout (little-endian, no header; the metadata travels beside it):
//   K[pos_begin .. pos_end)[kv_dim]  then  V[pos_begin .. pos_end)[kv_dim]
// each element in `type` (f32: 4 bytes IEEE binary32, f16: 2 bytes IEEE binary16), kv_dim =
// n_kv_heads * head_size with head h at elements [h*head_size, (h+1)*head_size).
// Size = 2 * (pos_end - pos_begin) * kv_dim * element bytes  (kv_segment_bytes()).

#include "engine/dtype.hpp"
#include "engine/kv_cache.hpp"

#include <cstddef>
#include <span>

namespace duet::engine {

struct kv_segment_meta {
  int layer = 0;           ///< model layer index
  int pos_begin = 0;       ///< first position
  int pos_end = 0;         ///< one past the last position
  dtype type = dtype::f32; ///< element type (f32 or f16)
  int n_kv_heads = 0;      ///< K/V heads
  int head_size = 0;       ///< values per head

  int tokens() const { return pos_end - pos_begin; }
  int kv_dim() const { return n_kv_heads * head_size; }
};

/// Bytes of a segment with this metadata (0 for an empty or negative range).
std::size_t kv_segment_bytes(const kv_segment_meta& meta);

/// Metadata of `cache`'s segment for `layer`, positions [pos_begin, pos_end).
kv_segment_meta kv_segment_for(const kv_cache& cache, int layer, int pos_begin, int pos_end);

/// Copies the segment `meta` of sequence `id` into `out` (exactly kv_segment_bytes(meta)).
/// Throws engine_error: invalid_argument (unknown sequence, layer not held, range not yet
/// written), mismatch (meta dtype/shape differ from the cache, `out` size wrong).
void kv_export(const kv_cache& cache, seq_id id, const kv_segment_meta& meta,
               std::span<std::byte> out);

/// Writes a segment into sequence `id` of `cache` so decode can continue there. The sequence
/// must exist and have blocks for [0, pos_end) (seq_reserve), and pos_begin must not leave a
/// gap (pos_begin <= layer_length). Validates everything before writing anything: throws
/// engine_error mismatch (dtype, n_kv_heads, head_size, byte size), invalid_argument (layer not
/// held, bad range, unknown sequence, gap) or out_of_capacity (not reserved).
void kv_import(kv_cache& cache, seq_id id, const kv_segment_meta& meta,
               std::span<const std::byte> in);

} // namespace duet::engine
