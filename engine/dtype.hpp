#pragma once

// Element types of weights and KV: float32, IEEE float16, and GGML's Q8_0 blocks.
// Q8_0 follows ggml (ggml-common.h): blocks of 32 values, one f16 scale d, 32 int8 quants,
// value = d * q. A row of `cols` Q8_0 values is cols/32 blocks (cols must be a multiple of 32).

#include <bit>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace duet::engine {

enum class dtype : std::uint8_t { f32 = 0, f16 = 1, q8_0 = 2 };

/// Name as used on the command line and in errors: "f32", "f16", "q8_0".
constexpr std::string_view dtype_name(dtype t) {
  switch (t) {
  case dtype::f32:
    return "f32";
  case dtype::f16:
    return "f16";
  case dtype::q8_0:
    return "q8_0";
  }
  return "?";
}

constexpr std::size_t q8_0_block_values = 32;

/// One Q8_0 block, byte-compatible with ggml's block_q8_0 (34 bytes, no padding).
struct q8_0_block {
  std::uint16_t d; ///< scale, IEEE f16 bits
  std::int8_t qs[q8_0_block_values];
};
static_assert(sizeof(q8_0_block) == 34);

/// Bytes of one row of `cols` values of type `t` (cols % 32 == 0 for q8_0).
constexpr std::size_t row_bytes(dtype t, std::size_t cols) {
  switch (t) {
  case dtype::f32:
    return cols * 4;
  case dtype::f16:
    return cols * 2;
  case dtype::q8_0:
    return cols / q8_0_block_values * sizeof(q8_0_block);
  }
  return 0;
}

/// IEEE 754 binary16 -> binary32, exact (subnormals, inf and NaN included).
inline float f16_to_f32(std::uint16_t h) {
  std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1fu;
  std::uint32_t mant = h & 0x3ffu;
  std::uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else { // subnormal: renormalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      bits = sign | static_cast<std::uint32_t>(127 - 15 - e) << 23 | (mant & 0x3ffu) << 13;
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | mant << 13;
  } else {
    bits = sign | (exp + (127 - 15)) << 23 | mant << 13;
  }
  return std::bit_cast<float>(bits);
}

/// binary32 -> binary16, round to nearest even (overflow to inf, NaN kept quiet).
inline std::uint16_t f32_to_f16(float f) {
  std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  std::uint32_t sign = (x >> 16) & 0x8000u;
  std::uint32_t abs = x & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u);  // NaN
  if (abs >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u); // overflow -> inf
  if (abs < 0x38800000u) {                                                   // subnormal or zero
    if (abs < 0x33000000u) return static_cast<std::uint16_t>(sign);
    std::uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    int shift = 113 - static_cast<int>(abs >> 23) + 13;
    std::uint32_t half = mant >> shift;
    std::uint32_t rem = mant & ((1u << shift) - 1);
    std::uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u))) ++half;
    return static_cast<std::uint16_t>(sign | half);
  }
  std::uint32_t half = ((abs - 0x38000000u) >> 13);
  std::uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) ++half;
  return static_cast<std::uint16_t>(sign | half);
}

} // namespace duet::engine
