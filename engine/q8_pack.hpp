#pragma once

// q8_0 weight rows repacked 8 at a time for the integer matmul kernels (engine/kernels_q8_0.ipp).
//
// In the file layout every 32-value block of a row carries its own f16 scale, so a kernel that
// reads rows one by one does per (row, block) one integer dot product of 32 values and then
// ~6 float and shuffle instructions to scale it; that float work, not the integer work, bounded
// prefill and batched decode (prefill ran at ~25% of the measured int8 peak). In the packed
// layout one 256-bit vector holds 4 consecutive values of each of 8 rows, so one vpdpbusd
// against 4 broadcast activation bytes advances 8 rows at once, and the scaling of 8 rows is one
// convert, one multiply and one FMA per block.
//
// Layout: the full groups of 8 rows (rows 8g .. 8g+7, g < rows / 8), group-major, and within a
// group one record of q8_pack_record_bytes per 32-value block b, in block order:
//   uint16 d[8]       the 8 rows' f16 scales of block b
//   uint8  qs[8][8][4] qs[k][i][j] = row (8g + i), value 4k + j of block b, plus 128 (as u8)
// 272 bytes per 8 x 32 values: exactly the file's 8 x 34, so a decode step reads the same bytes.
// Rows past the last full group (rows % 8 of them) stay in the file layout and keep the
// per-row kernels.

#include "engine/model_weights.hpp"

#include <cstddef>
#include <cstdint>
#include <functional>

namespace duet::engine {

constexpr std::int64_t q8_pack_rows = 8;
constexpr std::size_t q8_pack_record_bytes = 16 + 256;

/// Bytes of `w`'s packed groups (0 unless w is q8_0 with at least 8 rows).
std::size_t q8_packed_bytes(const tensor_view& w);

/// Writes w's packed groups (q8_packed_bytes(w) bytes) to `out`.
void pack_q8_0(const tensor_view& w, std::uint8_t* out);

/// Packs every q8_0 matrix the forward pass multiplies (the layers' seven and the classifier)
/// into one owned buffer kept in m.packed, and points their views' q8_packed at it. Nothing
/// happens when the CPU has no SIMD kernels (the scalar kernels read the file layout).
/// `packed_from` (optional) is told each original range that is now packed: a loader can
/// release those pages of its mapping, since the kernels no longer read them.
void pack_q8_0_weights(model_weights& m,
                       const std::function<void(const void*, std::size_t)>& packed_from = {});

} // namespace duet::engine
