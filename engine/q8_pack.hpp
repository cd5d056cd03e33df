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
// Layout: the full groups of 8 rows (rows 8g .. 8g+7, g < rows / 8) in pairs (groups 2p and
// 2p+1), pair-major, and within a pair one record of q8_pack_pair_bytes per 32-value block b, in
// block order:
//   uint16 d[2][8]       d[h][i] = the f16 scale of block b of row 16p + 8h + i
//   uint8  qs[8][2][8][4] qs[k][h][i][j] = row 16p + 8h + i, value 4k + j of block b, plus 128
//                         (as u8)
// So 64 bytes qs[k] are one 512-bit register of 16 rows x 4 values and d one of 16 scales, and
// a group alone (the 256-bit kernels) is the half h of each 64 bytes. 544 bytes per 16 x 32
// values: exactly the file's 16 x 34, so a decode step reads the same bytes. With an odd number
// of groups the last pair's second half is padding (scales 0, values 0), which no kernel reads.
// Rows past the last full group (rows % 8 of them) stay in the file layout and keep the
// per-row kernels.

#include "engine/model_weights.hpp"

#include <cstddef>
#include <cstdint>
#include <functional>

namespace duet::engine {

constexpr std::int64_t q8_pack_rows = 8;                   ///< rows per group
constexpr std::size_t q8_pack_pair_bytes = 2 * (16 + 256); ///< a pair's record of one block

/// Bytes of `w`'s packed groups (0 unless w is q8_0 with at least 8 rows), padding included.
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
