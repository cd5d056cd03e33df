// Numeric kernels: scalar definitions plus a runtime-dispatched AVX2/FMA/F16C matmul.
#include "engine/kernels.hpp"

#include "engine/error.hpp"
#include "engine/q8_pack.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define DUET_X86 1
#endif

namespace duet::engine::kernels {

namespace {

std::atomic<simd> simd_limit{simd::avx512_vnni};

bool cpu_has_avx2() {
#ifdef DUET_X86
  // F16C through cpuid leaf 1 (ecx bit 29): clang 14's __builtin_cpu_supports has no "f16c".
  static const bool has = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
    return f16c && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
#else
  return false;
#endif
}

bool supported(simd level) {
#ifdef DUET_X86
  switch (level) {
  case simd::scalar:
    return true;
  case simd::avx2:
    return cpu_has_avx2();
  case simd::avx512_vnni:
    // __builtin_cpu_supports checks that the OS saves the AVX-512 state too (EVEX needs it).
    return cpu_has_avx2() && __builtin_cpu_supports("avx512vnni") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw");
  case simd::avx_vnni: {
    // AVX-VNNI: cpuid leaf 7 subleaf 1, eax bit 4 (neither compiler's builtin names it).
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    return cpu_has_avx2() && __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) != 0 &&
           (eax & (1u << 4)) != 0;
  }
  }
#else
  if (level == simd::scalar) return true;
#endif
  return false;
}

simd widest_at_or_below(simd limit) {
  static const bool has[] = {supported(simd::scalar), supported(simd::avx2),
                             supported(simd::avx_vnni), supported(simd::avx512_vnni)};
  for (int l = static_cast<int>(limit); l > 0; --l)
    if (has[l]) return static_cast<simd>(l);
  return simd::scalar;
}

bool use_simd() {
  return current_simd() != simd::scalar;
}

// -- scalar ----------------------------------------------------------------------------------

/// Weight k of a row, dequantized (exact for all three types).
inline float weight_at(dtype t, const std::uint8_t* row, std::int64_t k) {
  switch (t) {
  case dtype::f32: {
    float v;
    std::memcpy(&v, row + k * 4, 4);
    return v;
  }
  case dtype::f16: {
    std::uint16_t h;
    std::memcpy(&h, row + k * 2, 2);
    return f16_to_f32(h);
  }
  case dtype::q8_0: {
    const auto* b = reinterpret_cast<const q8_0_block*>(row) + k / 32;
    return f16_to_f32(b->d) * static_cast<float>(b->qs[k % 32]);
  }
  }
  return 0.0f;
}

/// Quantizes activation rows [t_begin, t_end) of `cols` values (32 | cols) into q8 blocks, as
/// ggml's quantize_row_q8_0 does but with an f32 scale: d = max|x| / 127, q = round(x / d).
/// out is [n][cols / 32]. The scalar version; quantize_activations_avx2 computes the same values.
void quantize_activations(const float* x, std::int64_t x_stride, std::int64_t cols, int t_begin,
                          int t_end, q8_activation_block* out) {
  const std::int64_t blocks = cols / 32;
  for (int t = t_begin; t < t_end; ++t) {
    const float* xt = x + static_cast<std::int64_t>(t) * x_stride;
    for (std::int64_t b = 0; b < blocks; ++b) {
      auto& blk = out[t * blocks + b];
      float amax = 0.0f;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::abs(xt[b * 32 + i]));
      blk.d = amax / 127.0f;
      const float id = blk.d != 0.0f ? 1.0f / blk.d : 0.0f;
      // Round half to even, as the AVX2 version's _mm256_cvtps_epi32 does.
      for (int i = 0; i < 32; ++i)
        blk.qs[i] = static_cast<std::int8_t>(
            std::clamp(std::nearbyint(xt[b * 32 + i] * id), -127.0f, 127.0f));
    }
  }
}

/// Scalar q8_0 x q8 activations: per block an exact integer dot, scaled by d_w * d_x.
void matmul_q8_0_scalar(const tensor_view& w, const matmul_input& in, float* y,
                        std::int64_t y_stride, std::int64_t row_begin, std::int64_t row_end) {
  const std::int64_t blocks = w.cols / 32;
  const int n = in.n();
  for (std::int64_t r = row_begin; r < row_end; ++r) {
    const auto* row = reinterpret_cast<const q8_0_block*>(w.row(r));
    for (int t = 0; t < n; ++t) {
      const q8_activation_block* xb = in.q8() + t * blocks;
      float sum = 0.0f;
      for (std::int64_t b = 0; b < blocks; ++b) {
        std::int32_t isum = 0;
        for (int i = 0; i < 32; ++i) isum += std::int32_t{row[b].qs[i]} * xb[b].qs[i];
        sum += f16_to_f32(row[b].d) * xb[b].d * static_cast<float>(isum);
      }
      y[t * y_stride + r] = sum;
    }
  }
}

void matmul_scalar(const tensor_view& w, const matmul_input& in, float* y, std::int64_t y_stride,
                   std::int64_t row_begin, std::int64_t row_end) {
  if (w.type == dtype::q8_0) return matmul_q8_0_scalar(w, in, y, y_stride, row_begin, row_end);
  const float* x = in.x();
  const std::int64_t x_stride = in.x_stride();
  const int n = in.n();
  const std::int64_t cols = w.cols;
  for (std::int64_t r = row_begin; r < row_end; ++r) {
    const std::uint8_t* row = w.row(r);
    for (int t = 0; t < n; ++t) {
      const float* xt = x + static_cast<std::int64_t>(t) * x_stride;
      float sum = 0.0f;
      for (std::int64_t k = 0; k < cols; ++k) sum += weight_at(w.type, row, k) * xt[k];
      y[t * y_stride + r] = sum;
    }
  }
}

// -- AVX2 ------------------------------------------------------------------------------------

#ifdef DUET_X86
#define DUET_AVX2 __attribute__((target("avx2,fma,f16c")))
/// AVX-512 F for attention's weighted sum of V (only where current_simd() is avx512_vnni, which
/// implies it).
#define DUET_AVX512F __attribute__((target("avx2,fma,f16c,avx512f")))
// The tiles' tiny constant loops must be unrolled so the accumulators stay in registers (-O2
// does not unroll them by itself, and then every FMA goes through the stack).
#define DUET_UNROLL _Pragma("GCC unroll 16")
/// How far ahead of the current weight the single-token kernels prefetch, in bytes of each
/// row stream. Measured with `duet bench engine` on stories110M q8_0 (float dot product then),
/// decode 1 seq, 1 thread: none 33-41 tok/s, 256 B 60, 1 KiB 63-66, 4 KiB 90, 8 KiB 109-112,
/// 16 KiB 103-110 (the hardware prefetcher alone falls behind); with the integer dot product
/// 8 KiB is still the best.
constexpr int prefetch_bytes = 8192;

DUET_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/// The largest of v's 8 lanes, in hsum's pairs (for lanes without NaN any order gives it).
DUET_AVX2 inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

/// hsum of 8 vectors at once: result lanes 0-7 hold hsum(v[0]), hsum(v[2]), hsum(v[4]),
/// hsum(v[6]), hsum(v[1]), hsum(v[3]), hsum(v[5]), hsum(v[7]), each by the same additions of the
/// same pairs as hsum (lo + hi halves, then lanes 0+2 and 1+3, then those two), so the same
/// bits: a score is the same float whichever of the two computed it. 21 instructions for 8 sums
/// instead of 8 x 5 plus 8 scalar divisions after it (one vector division instead). With the
/// 512-bit weighted sum of V, attention's share of a 512-token prefill fell from 71% to 49% of
/// the matmuls' (perf, 1 thread); this step alone was not measurable end to end on the Xeon VM
/// of 2026-11-29.
DUET_AVX2 inline __m256 hsum8(const __m256* v) {
  __m256 pair[4]; // [v[2k] halves summed, v[2k+1] halves summed]
  DUET_UNROLL
  for (int k = 0; k < 4; ++k)
    pair[k] = _mm256_add_ps(_mm256_permute2f128_ps(v[2 * k], v[2 * k + 1], 0x20),
                            _mm256_permute2f128_ps(v[2 * k], v[2 * k + 1], 0x31));
  const __m256 abcd = _mm256_add_ps(_mm256_shuffle_ps(pair[0], pair[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                    _mm256_shuffle_ps(pair[0], pair[1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m256 efgh = _mm256_add_ps(_mm256_shuffle_ps(pair[2], pair[3], _MM_SHUFFLE(1, 0, 1, 0)),
                                    _mm256_shuffle_ps(pair[2], pair[3], _MM_SHUFFLE(3, 2, 3, 2)));
  return _mm256_add_ps(_mm256_shuffle_ps(abcd, efgh, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm256_shuffle_ps(abcd, efgh, _MM_SHUFFLE(3, 1, 3, 1)));
}

/// The two 8-lane halves of a 512-bit register. Masked extracts (mask all ones): the plain ones,
/// and g++ 12's cast, which is one, have an undefined source that g++ 12 warns about (GCC bug
/// 105593).
DUET_AVX512F inline __m256 low_half(__m512 v) {
  return _mm256_castpd_ps(
      _mm512_mask_extractf64x4_pd(_mm256_setzero_pd(), 0xf, _mm512_castps_pd(v), 0));
}
DUET_AVX512F inline __m256 high_half(__m512 v) {
  return _mm256_castpd_ps(
      _mm512_mask_extractf64x4_pd(_mm256_setzero_pd(), 0xf, _mm512_castps_pd(v), 1));
}
/// v in both halves of a 512-bit register (the masked broadcast, for the same reason).
DUET_AVX512F inline __m512 both_halves(__m256 v) {
  return _mm512_castpd_ps(
      _mm512_mask_broadcast_f64x4(_mm512_setzero_pd(), 0xff, _mm256_castps_pd(v)));
}

/// Rows per register tile; thread_pool chunks are multiples of this, so tails are rare.
constexpr int tile_rows = 4;

/// R f32 weight rows x NT tokens: R * NT dot products with every accumulator in a register
/// (R * NT + R <= 16 ymm; the activation is an FMA memory operand). Each 8-wide weight load is
/// reused for NT tokens and each activation load for R rows.
/// `next` (or null): the R rows the caller multiplies after these, prefetched alongside so they
/// come from cache when their first tile starts (the multi-token path streams each row group
/// from memory once).
template <int R, int NT>
DUET_AVX2 void tile_f32(const float* const* rows, std::int64_t cols, const float* x,
                        std::int64_t x_stride, int t0, float* y, std::int64_t y_stride,
                        std::int64_t r0, const float* const* next = nullptr) {
  const std::int64_t cols8 = cols & ~std::int64_t{7};
  const float* xs[NT];
  DUET_UNROLL
  for (int j = 0; j < NT; ++j) xs[j] = x + static_cast<std::int64_t>(t0 + j) * x_stride;
  __m256 acc[R][NT];
  DUET_UNROLL
  for (int i = 0; i < R; ++i) DUET_UNROLL
  for (int j = 0; j < NT; ++j) acc[i][j] = _mm256_setzero_ps();
  for (std::int64_t k = 0; k < cols8; k += 8) {
    __m256 wv[R];
    DUET_UNROLL
    for (int i = 0; i < R; ++i) {
      if constexpr (NT == 1)
        _mm_prefetch(reinterpret_cast<const char*>(rows[i] + k) + prefetch_bytes, _MM_HINT_T0);
      else if (next != nullptr && k % 16 == 0) // one prefetch per 64-byte line
        _mm_prefetch(reinterpret_cast<const char*>(next[i] + k), _MM_HINT_T0);
      wv[i] = _mm256_loadu_ps(rows[i] + k);
    }
    DUET_UNROLL
    for (int j = 0; j < NT; ++j) {
      __m256 xv = _mm256_loadu_ps(xs[j] + k);
      DUET_UNROLL
      for (int i = 0; i < R; ++i) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
    }
  }
  DUET_UNROLL
  for (int i = 0; i < R; ++i) DUET_UNROLL
  for (int j = 0; j < NT; ++j) {
    float sum = hsum(acc[i][j]);
    for (std::int64_t k = cols8; k < cols; ++k) sum += rows[i][k] * xs[j][k];
    y[static_cast<std::int64_t>(t0 + j) * y_stride + r0 + i] = sum;
  }
}

/// Converts rows [r0, r0 + R) of an f16 matrix into dst[R][cols] (exact: f16 -> f32 is), so
/// the multi-token path pays the conversion once per call. (q8_0 has its own path:
/// matmul_q8_0_avx2.)
template <int R>
DUET_AVX2 void dequantize_rows(const tensor_view& w, std::int64_t r0, float* dst) {
  const std::int64_t cols = w.cols, cols8 = cols & ~std::int64_t{7};
  DUET_UNROLL
  for (int i = 0; i < R; ++i) {
    const std::uint8_t* row = w.row(r0 + i);
    float* out = dst + i * cols;
    for (std::int64_t k = 0; k < cols8; k += 8)
      _mm256_storeu_ps(
          out + k, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k * 2))));
    for (std::int64_t k = cols8; k < cols; ++k) out[k] = weight_at(w.type, row, k);
  }
}

/// The tokens of a multi-token f32 matmul in pairs for tile_f32_pairs: pair q, 8 columns c:
/// 16 floats, x[2q][8c .. 8c+7] then x[2q+1][8c .. 8c+7] (the columns past the last multiple
/// of 8 stay in x). Filled per call, per thread: n x cols floats copied beside the n x rows x
/// cols multiply-adds, 1/rows of the work per thread (1/768 for stories110M's smallest
/// matrices), so it is left per call although the forward pass multiplies one input by several
/// matrices (q, k, v; w1, w3) and splits rows over threads; the figures below include these
/// copies.
DUET_AVX2 void pack_token_pairs(const float* x, std::int64_t x_stride, int n, std::int64_t cols,
                                std::vector<float>& out) {
  const std::int64_t cols8 = cols & ~std::int64_t{7};
  const std::size_t need = static_cast<std::size_t>(n / 2) * static_cast<std::size_t>(2 * cols8);
  if (out.size() < need) out.resize(need);
  float* o = out.data();
  for (int q = 0; q < n / 2; ++q) {
    const float* a = x + static_cast<std::int64_t>(2 * q) * x_stride;
    const float* b = a + x_stride;
    for (std::int64_t k = 0; k < cols8; k += 8, o += 16) {
      _mm256_storeu_ps(o, _mm256_loadu_ps(a + k));
      _mm256_storeu_ps(o + 8, _mm256_loadu_ps(b + k));
    }
  }
}

/// tile_f32 for R rows x NP token pairs in 512-bit registers (AVX-512): a register holds the
/// 8-lane accumulators of two tokens, the weights' 8 floats broadcast to both halves (a load,
/// no shuffle) and the pair's activations side by side (pack_token_pairs). Per (row, token) and
/// lane the same FMA sequence over the columns as tile_f32, then the same hsum and the same
/// scalar tail, so the same bits; per FMA instruction twice the work. R * NP + R <= 32 registers.
/// Measured (duet bench engine, stories110M f32, 1 thread, the Xeon VM of 2026-11-29, old and
/// new binaries alternated twice): prefill 128 363-366 -> 455-462 tok/s, prefill 512 329-346
/// -> 403-417, 32 sequences 234-235 -> 270-272 (8 sequences, under 12 tokens, unchanged).
template <int R, int NP>
DUET_AVX512F void tile_f32_pairs(const float* const* rows, std::int64_t cols, const float* x,
                                 std::int64_t x_stride, const float* pairs, int t0, float* y,
                                 std::int64_t y_stride, std::int64_t r0,
                                 const float* const* next = nullptr) {
  const std::int64_t cols8 = cols & ~std::int64_t{7};
  const float* xp = pairs + static_cast<std::int64_t>(t0 / 2) * 2 * cols8;
  __m512 acc[R][NP];
  DUET_UNROLL
  for (int i = 0; i < R; ++i) DUET_UNROLL
  for (int p = 0; p < NP; ++p) acc[i][p] = _mm512_setzero_ps();
  for (std::int64_t k = 0; k < cols8; k += 8) {
    __m512 wv[R];
    DUET_UNROLL
    for (int i = 0; i < R; ++i) {
      if (next != nullptr && k % 16 == 0) // one prefetch per 64-byte line
        _mm_prefetch(reinterpret_cast<const char*>(next[i] + k), _MM_HINT_T0);
      wv[i] = both_halves(_mm256_loadu_ps(rows[i] + k));
    }
    DUET_UNROLL
    for (int p = 0; p < NP; ++p) {
      const __m512 xv = _mm512_loadu_ps(xp + static_cast<std::int64_t>(p) * 2 * cols8 + 2 * k);
      DUET_UNROLL
      for (int i = 0; i < R; ++i) acc[i][p] = _mm512_fmadd_ps(wv[i], xv, acc[i][p]);
    }
  }
  DUET_UNROLL
  for (int i = 0; i < R; ++i) DUET_UNROLL
  for (int p = 0; p < NP; ++p) {
    const __m256 half[2] = {low_half(acc[i][p]), high_half(acc[i][p])};
    DUET_UNROLL
    for (int h = 0; h < 2; ++h) {
      const int t = t0 + 2 * p + h;
      const float* xt = x + static_cast<std::int64_t>(t) * x_stride;
      float sum = hsum(half[h]);
      for (std::int64_t k = cols8; k < cols; ++k) sum += rows[i][k] * xt[k];
      y[static_cast<std::int64_t>(t) * y_stride + r0 + i] = sum;
    }
  }
}

/// R rows (already f32) against all n tokens: 3-token tiles, then a 2 or 1 token tail. With
/// `pairs` (pack_token_pairs, on AVX-512; R == 4 only) 12 tokens at a time in 512-bit
/// registers first.
template <int R>
DUET_AVX2 void rows_times_tokens(const float* const* rows, std::int64_t cols, const float* x,
                                 std::int64_t x_stride, int n, float* y, std::int64_t y_stride,
                                 std::int64_t r0, const float* const* next = nullptr,
                                 const float* pairs = nullptr) {
  constexpr int NT = R == 4 ? 3 : 6; // R * NT + R <= 16 registers
  int t = 0;
  if constexpr (R == 4) {
    constexpr int NP = 6; // 4 x 6 accumulators + 4 weights in 32 registers
    for (; pairs != nullptr && t + 2 * NP <= n; t += 2 * NP)
      tile_f32_pairs<R, NP>(rows, cols, x, x_stride, pairs, t, y, y_stride, r0,
                            t == 0 ? next : nullptr);
  }
  // The first tile (the one that streams these rows in) prefetches the next group's rows.
  for (; t + NT <= n; t += NT)
    tile_f32<R, NT>(rows, cols, x, x_stride, t, y, y_stride, r0, t == 0 ? next : nullptr);
  for (; t + 2 <= n; t += 2)
    tile_f32<R, 2>(rows, cols, x, x_stride, t, y, y_stride, r0, t == 0 ? next : nullptr);
  for (; t < n; ++t) tile_f32<R, 1>(rows, cols, x, x_stride, t, y, y_stride, r0);
}

/// Multi-token path: each group of R weight rows is read from memory once per call (and
/// dequantized once, into per-thread scratch), then multiplied with every token.
template <int R>
DUET_AVX2 void row_group(const tensor_view& w, std::int64_t r0, const float* x,
                         std::int64_t x_stride, int n, float* y, std::int64_t y_stride,
                         std::vector<float>& scratch, const float* pairs) {
  const float* rows[R];
  const float* next[R];
  bool has_next = false;
  if (w.type == dtype::f32) {
    DUET_UNROLL
    for (int i = 0; i < R; ++i) rows[i] = reinterpret_cast<const float*>(w.row(r0 + i));
    has_next = r0 + 2 * R <= w.rows;
    if (has_next) {
      DUET_UNROLL
      for (int i = 0; i < R; ++i) next[i] = reinterpret_cast<const float*>(w.row(r0 + R + i));
    }
  } else {
    dequantize_rows<R>(w, r0, scratch.data());
    DUET_UNROLL
    for (int i = 0; i < R; ++i) rows[i] = scratch.data() + i * w.cols;
  }
  rows_times_tokens<R>(rows, w.cols, x, x_stride, n, y, y_stride, r0, has_next ? next : nullptr,
                       pairs);
}

/// quantize_activations, 8 lanes at a time (the same d, and the same rounding: half to even).
/// A scalar loop with a libm round per value cost as much as the matmul itself in prefill.
DUET_AVX2 void quantize_activations_avx2(const float* x, std::int64_t x_stride, std::int64_t cols,
                                         int t_begin, int t_end, q8_activation_block* out) {
  const std::int64_t blocks = cols / 32;
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int t = t_begin; t < t_end; ++t) {
    const float* xt = x + static_cast<std::int64_t>(t) * x_stride;
    for (std::int64_t b = 0; b < blocks; ++b) {
      auto& blk = out[t * blocks + b];
      __m256 v[4];
      __m256 amax = _mm256_setzero_ps();
      DUET_UNROLL
      for (int k = 0; k < 4; ++k) {
        v[k] = _mm256_loadu_ps(xt + b * 32 + k * 8);
        amax = _mm256_max_ps(amax, _mm256_and_ps(v[k], abs_mask));
      }
      blk.d = hmax(amax) / 127.0f;
      const __m256 id = _mm256_set1_ps(blk.d != 0.0f ? 1.0f / blk.d : 0.0f);
      __m256i q[4];
      DUET_UNROLL
      for (int k = 0; k < 4; ++k) q[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], id));
      // int32 -> int16 -> int8 packs interleave 128-bit lanes; the permute puts them back.
      const __m256i q16a = _mm256_packs_epi32(q[0], q[1]), q16b = _mm256_packs_epi32(q[2], q[3]);
      const __m256i q8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(q16a, q16b),
                                                     _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(blk.qs), q8);
    }
  }
}

// The q8_0 kernels per instruction set (see kernels_q8_0.ipp). AVX-VNNI and AVX512-VNNI (its
// 256-bit form, which needs AVX512VL) fuse maddubs + madd into one dpbusd.
#define DUET_Q8_NS q8_avx2
#define DUET_Q8_ZMM 0
#define DUET_Q8_TARGET DUET_AVX2
#define DUET_Q8_DPBUSD(acc, u, s)                                                                  \
  _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
#define DUET_Q8_UNSIGNED_X 0
#define DUET_Q8_TILE_ROWS 2
#define DUET_Q8_TILE_TOKENS 4
#include "engine/kernels_q8_0.ipp"

#define DUET_Q8_NS q8_avx_vnni
#define DUET_Q8_ZMM 0
#define DUET_Q8_TARGET __attribute__((target("avx2,fma,f16c,avxvnni")))
#define DUET_Q8_DPBUSD(acc, u, s) _mm256_dpbusd_avx_epi32(acc, u, s)
#define DUET_Q8_UNSIGNED_X 1
#define DUET_Q8_TILE_ROWS 2
#define DUET_Q8_TILE_TOKENS 4
#include "engine/kernels_q8_0.ipp"

#define DUET_Q8_NS q8_avx512_vnni
#define DUET_Q8_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")))
#define DUET_Q8_ZMM 1
#define DUET_Q8_DPBUSD(acc, u, s) _mm256_dpbusd_epi32(acc, u, s)
#define DUET_Q8_UNSIGNED_X 1
#define DUET_Q8_TILE_ROWS 4
#define DUET_Q8_TILE_TOKENS 8
#include "engine/kernels_q8_0.ipp"

/// Single-token f16: R rows with two accumulators each (latency of the FMA chain hidden).
template <int R>
DUET_AVX2 void gemv_f16(const tensor_view& w, std::int64_t r0, const float* x, float* y) {
  const std::int64_t cols = w.cols, cols8 = cols & ~std::int64_t{7};
  const std::uint8_t* rows[R];
  DUET_UNROLL
  for (int i = 0; i < R; ++i) rows[i] = w.row(r0 + i);
  __m256 acc[R];
  DUET_UNROLL
  for (int i = 0; i < R; ++i) acc[i] = _mm256_setzero_ps();
  for (std::int64_t k = 0; k < cols8; k += 8) {
    const __m256 xv = _mm256_loadu_ps(x + k);
    DUET_UNROLL
    for (int i = 0; i < R; ++i) {
      _mm_prefetch(reinterpret_cast<const char*>(rows[i] + k * 2) + prefetch_bytes, _MM_HINT_T0);
      acc[i] = _mm256_fmadd_ps(
          _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[i] + k * 2))), xv,
          acc[i]);
    }
  }
  DUET_UNROLL
  for (int i = 0; i < R; ++i) {
    float sum = hsum(acc[i]);
    for (std::int64_t k = cols8; k < cols; ++k) sum += weight_at(w.type, rows[i], k) * x[k];
    y[r0 + i] = sum;
  }
}

template <int R>
DUET_AVX2 void gemv_group(const tensor_view& w, std::int64_t r0, const float* x, float* y) {
  switch (w.type) {
  case dtype::f32: {
    const float* rows[R];
    DUET_UNROLL
    for (int i = 0; i < R; ++i) rows[i] = reinterpret_cast<const float*>(w.row(r0 + i));
    return tile_f32<R, 1>(rows, w.cols, x, 0, 0, y, 0, r0);
  }
  case dtype::f16:
    return gemv_f16<R>(w, r0, x, y);
  case dtype::q8_0:
    break; // q8_*::matmul_q8_0
  }
}

/// e^x in 8 lanes for softmax and SiLU, where libm's expf per value was the cost (measured,
/// duet bench engine, stories110M q8_0, 1 thread, old and new binaries alternated: prefill 128
/// 1614-1620 -> 1831-1887 tok/s, prefill 512 972-989 -> 1176-1179, 32 sequences 886-914 ->
/// 1000-1008). Cephes' expf (as avx_mathfun): x = n ln 2 + r with |r| <= ln 2 / 2, a
/// degree-5 polynomial for e^r, then 2^n in the exponent bits. Within 2 ulp of expf over the
/// clamped range [-87.3, 88.4] (tests/engine/kernels_test.cpp checks it against std::exp); below
/// it the result is ~1e-38 instead of a denormal or 0, which a softmax or SiLU cannot tell.
DUET_AVX2 inline __m256 exp_avx2(__m256 x) {
  x = _mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f));
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3365447504019f));
  __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
  fx = _mm256_floor_ps(fx);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i n =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(n));
}

/// The largest of x[0..size), 8 lanes at a time (a maximum is exact in any order: the same
/// value as the scalar loop's, for the finite scores a softmax gets).
DUET_AVX2 inline float max_avx2(const float* x, int size) {
  float max_val = x[0];
  int i = 0;
  if (size >= 8) {
    __m256 m = _mm256_loadu_ps(x);
    for (i = 8; i + 8 <= size; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
    max_val = hmax(m);
  }
  for (; i < size; ++i)
    if (x[i] > max_val) max_val = x[i];
  return max_val;
}

/// softmax with exp_avx2: the max, then e^(x - max) and their sum 8 lanes at a time. Tried and
/// dropped (2026-11-29): the exponentials and divisions 16 lanes at a time in 512-bit registers
/// (the same bits): a 512-token prefill measured the same (455-457 ms either way, alternated in
/// one process, stories110M q8_0, 1 thread).
DUET_AVX2 void softmax_avx2(float* x, int size) {
  const float max_val = max_avx2(x, size);
  const __m256 mv = _mm256_set1_ps(max_val);
  __m256 sum8 = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= size; i += 8) {
    const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv));
    _mm256_storeu_ps(x + i, e);
    sum8 = _mm256_add_ps(sum8, e);
  }
  float sum = hsum(sum8);
  for (; i < size; ++i) {
    x[i] = std::exp(x[i] - max_val);
    sum += x[i];
  }
  const __m256 sv = _mm256_set1_ps(sum);
  i = 0;
  for (; i + 8 <= size; i += 8) _mm256_storeu_ps(x + i, _mm256_div_ps(_mm256_loadu_ps(x + i), sv));
  for (; i < size; ++i) x[i] /= sum;
}

/// argmax() 8 lanes at a time: the largest value, skipping NaNs (_mm256_max_ps returns its second
/// operand, the running maximum, where the first is NaN), then the first index holding a value
/// equal to it (+0 and -0 compare equal, as the scalar loop, which never moves from one to the
/// other, treats them).
DUET_AVX2 int argmax_avx2(const float* x, int size) {
  if (std::isnan(x[0])) return 0;
  __m256 m = _mm256_set1_ps(x[0]);
  int i = 0;
  for (; i + 8 <= size; i += 8) m = _mm256_max_ps(_mm256_loadu_ps(x + i), m);
  float best = hmax(m);
  for (; i < size; ++i)
    if (x[i] > best) best = x[i];
  const __m256 b = _mm256_set1_ps(best);
  for (i = 0; i + 8 <= size; i += 8) {
    const int eq = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), b, _CMP_EQ_OQ));
    if (eq != 0) return i + __builtin_ctz(static_cast<unsigned>(eq));
  }
  for (; i < size; ++i)
    if (x[i] == best) return i;
  return 0; // not reached: best is one of the values
}

/// f32_to_f16_row 8 values at a time; returns how many it did. VCVTPS2PH rounds as f32_to_f16
/// does (to nearest even, from the immediate; MXCSR is not read) and keeps a NaN's payload,
/// which f32_to_f16 drops: NaN lanes are set to the quiet NaN of their sign.
DUET_AVX2 int f32_to_f16_avx2(const float* x, std::uint16_t* out, int n) {
  const __m128i quiet = _mm_set1_epi16(0x7e00), sign = _mm_set1_epi16(static_cast<short>(0x8000));
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 nan32 = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    const __m128i nan16 = _mm_packs_epi32(_mm256_castsi256_si128(_mm256_castps_si256(nan32)),
                                          _mm256_extractf128_si256(_mm256_castps_si256(nan32), 1));
    const __m128i canonical = _mm_or_si128(_mm_and_si128(h, sign), quiet);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm_blendv_epi8(h, canonical, nan16));
  }
  return i;
}

/// rope() of one head, 4 pairs per step; returns how many values it did. Per pair the scalar
/// loop's operations, each rounded on its own (a multiply, then the subtraction or addition;
/// no FMA): v0 * cos - v1 * sin in the even lane and v1 * cos + v0 * sin in the odd one, which
/// is the scalar v0 * sin + v1 * cos (a sum of the same two products, in either order, is the
/// same value). So the same bits, which the tests check.
DUET_AVX2 int rope_avx2(float* v, int head_size, const float* table) {
  int i = 0;
  for (; i + 8 <= head_size; i += 8) {
    const __m256 x = _mm256_loadu_ps(v + i);
    const __m256 cs = _mm256_loadu_ps(table + i);                         // c0 s0 c1 s1 ...
    const __m256 cos2 = _mm256_moveldup_ps(cs);                           // c0 c0 c1 c1 ...
    const __m256 sin2 = _mm256_movehdup_ps(cs);                           // s0 s0 s1 s1 ...
    const __m256 swapped = _mm256_permute_ps(x, _MM_SHUFFLE(2, 3, 0, 1)); // v1 v0 v3 v2 ...
    _mm256_storeu_ps(v + i, _mm256_addsub_ps(_mm256_mul_ps(x, cos2), _mm256_mul_ps(swapped, sin2)));
  }
  return i;
}

/// out[j] = weight[j] * (ss * x[j]) 8 values per step (rmsnorm_scale); returns how many it did.
/// out may be x: each step loads before it stores.
DUET_AVX2 int rmsnorm_scale_avx2(float* out, const float* x, const float* weight, int size,
                                 float ss) {
  const __m256 s8 = _mm256_set1_ps(ss);
  int j = 0;
  for (; j + 8 <= size; j += 8)
    _mm256_storeu_ps(out + j, _mm256_mul_ps(_mm256_loadu_ps(weight + j),
                                            _mm256_mul_ps(s8, _mm256_loadu_ps(x + j))));
  return j;
}

/// add_to 8 values per step; returns how many it did.
DUET_AVX2 int add_to_avx2(float* x, const float* y, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(x + i, _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  return i;
}

/// x[0..8) = e^x[0..8) (for exp_rows, which the tests use to check exp_avx2).
DUET_AVX2 void store_exp_avx2(float* x) {
  _mm256_storeu_ps(x, exp_avx2(_mm256_loadu_ps(x)));
}

/// silu_mul with exp_avx2 over the whole 8-value steps; returns how many values it did.
DUET_AVX2 int silu_mul_avx2(float* h1, const float* h3, int size) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int i = 0;
  for (; i + 8 <= size; i += 8) {
    const __m256 v = _mm256_loadu_ps(h1 + i);
    const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), v));
    const __m256 silu = _mm256_mul_ps(v, _mm256_div_ps(one, _mm256_add_ps(one, e)));
    _mm256_storeu_ps(h1 + i, _mm256_mul_ps(silu, _mm256_loadu_ps(h3 + i)));
  }
  return i;
}

/// What attention_avx2 and attention_rows_avx2 share: this head's K and V rows in each block of
/// the table, looked up once per block, then walked (kv_cache::k_row divides the position by the
/// block size, four times per position and head: measured, duet bench engine, stories110M q8_0,
/// 1 thread, 32 sequences, old and new binaries alternated: 200 steps from 64 positions
/// 439-445 -> 471-490 tok/s, 16 steps 647-661 -> 674-682; attention 36% -> 27% of samples).
struct head_walk {
  int hs, bt, nb;
  bool f16;
  std::ptrdiff_t head_bytes, row_bytes;
  const std::byte** kb; ///< [nb] this head's K in each block
  const std::byte** vb; ///< [nb] this head's V in each block

  DUET_AVX2 head_walk(const kv_cache& kv, std::span<const std::int32_t> table, int layer,
                      int kv_head, int positions)
      : hs(kv.config().head_size), bt(kv.config().block_tokens), nb((positions + bt - 1) / bt),
        f16(kv.config().type == dtype::f16),
        head_bytes(static_cast<std::ptrdiff_t>(hs) * (f16 ? 2 : 4)),
        row_bytes(static_cast<std::ptrdiff_t>(kv.row_bytes())) {
    thread_local std::vector<const std::byte*> bases; // [nb] K, then [nb] V
    if (bases.size() < static_cast<std::size_t>(2 * nb))
      bases.resize(static_cast<std::size_t>(2 * nb));
    kb = bases.data();
    vb = bases.data() + nb;
    const std::ptrdiff_t head_off = kv_head * head_bytes;
    for (int b = 0; b < nb; ++b) {
      kb[b] = kv.k_row(table, layer, b * bt) + head_off;
      vb[b] = kv.v_row(table, layer, b * bt) + head_off;
    }
  }

  DUET_AVX2 __m256 load(const std::byte* base, int i) const {
    if (f16)
      return _mm256_cvtph_ps(_mm_loadu_si128(
          reinterpret_cast<const __m128i*>(base + static_cast<std::ptrdiff_t>(i) * 2)));
    return _mm256_loadu_ps(reinterpret_cast<const float*>(base) + i);
  }
  const std::byte* k(int pos) const { return kb[pos / bt] + (pos % bt) * row_bytes; }

  /// out = sum over positions [0, n) of att[p] * V[p], 8 lanes at a time, up to 64 output floats
  /// in registers per pass over the positions.
  DUET_AVX2 void weighted_v(const float* att, int n, float* out) const {
    constexpr int chunk = 64; // output floats held in 8 registers per pass over the positions
    for (int c = 0; c < hs; c += chunk) {
      const int lanes = std::min(chunk, hs - c) / 8;
      __m256 acc[chunk / 8];
      DUET_UNROLL
      for (int m = 0; m < chunk / 8; ++m) acc[m] = _mm256_setzero_ps();
      for (int b = 0; b * bt < n; ++b) {
        const int b0 = b * bt, end = std::min(n, b0 + bt);
        const std::byte* v = vb[b] + static_cast<std::ptrdiff_t>(c) * (f16 ? 2 : 4);
        for (int p = b0; p < end; ++p, v += row_bytes) {
          const __m256 a = _mm256_set1_ps(att[p]);
          DUET_UNROLL
          for (int m = 0; m < chunk / 8; ++m)
            if (m < lanes) acc[m] = _mm256_fmadd_ps(a, load(v, m * 8), acc[m]);
        }
      }
      for (int m = 0; m < lanes; ++m) _mm256_storeu_ps(out + c + m * 8, acc[m]);
    }
  }
};

/// Whether attention's weighted sum of V may run in 512-bit registers.
bool wide_v(const head_walk& w) {
  return w.hs % 16 == 0 && current_simd() == simd::avx512_vnni;
}

/// 16 floats of a K or V row at element i, in the cache's dtype (F16: IEEE half).
template <bool F16>
DUET_AVX512F inline __m512 load16(const std::byte* base, int i) {
  if constexpr (F16) // the masked form: g++ 12 warns about the plain one's undefined source
    return _mm512_mask_cvtph_ps(_mm512_setzero_ps(), 0xffff,
                                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(
                                    base + static_cast<std::ptrdiff_t>(i) * 2)));
  else
    return _mm512_loadu_ps(reinterpret_cast<const float*>(base) + i);
}

/// head_walk::weighted_v for R rows (R <= 4) in 512-bit registers, for head sizes that are a
/// multiple of 16: row r sums att[r][p] * V[p] over positions [0, common + r). The positions
/// [0, common) go once for all R rows, each V row loaded once for all of them (a prefill
/// chunk's group of rows); each row's later positions follow on their own. Per row and output
/// float the same FMA sequence over the positions as weighted_v (the lanes are independent),
/// so the same bits, and half the instructions of 256-bit registers. Measured (duet bench engine,
/// stories110M q8_0, 1 thread, the Xeon VM of 2026-11-29, old and new alternated 3 times): prefill
/// 512 707-863 -> 878-986 tok/s; 32-sequence decode (one row, V from memory) unchanged.
/// This is one chunk of L x 16 output floats (L <= 4) from float c on; the dtype and L are
/// compile-time so that the position loop holds no branch: with both at run time, g++ 12 kept a
/// test of each per FMA and the dtype's per load, and reloaded the rows' score pointers
/// (perf annotate, 512-token prefill).
template <int R, bool F16, int L>
DUET_AVX512F void weighted_v_chunk_avx512(const head_walk& w, const float* const* att_rows,
                                          int common, float* const* out, int c) {
  constexpr std::ptrdiff_t elem = F16 ? 2 : 4;
  const float* att[R];
  __m512 acc[R][L];
  DUET_UNROLL
  for (int r = 0; r < R; ++r) {
    att[r] = att_rows[r];
    DUET_UNROLL
    for (int m = 0; m < L; ++m) acc[r][m] = _mm512_setzero_ps();
  }
  for (int b = 0; b * w.bt < common; ++b) {
    const int b0 = b * w.bt, end = std::min(common, b0 + w.bt);
    const std::byte* v = w.vb[b] + c * elem;
    for (int p = b0; p < end; ++p, v += w.row_bytes) {
      __m512 vv[L];
      DUET_UNROLL
      for (int m = 0; m < L; ++m) vv[m] = load16<F16>(v, m * 16);
      DUET_UNROLL
      for (int r = 0; r < R; ++r) {
        const __m512 a = _mm512_set1_ps(att[r][p]);
        DUET_UNROLL
        for (int m = 0; m < L; ++m) acc[r][m] = _mm512_fmadd_ps(a, vv[m], acc[r][m]);
      }
    }
  }
  DUET_UNROLL
  for (int r = 1; r < R; ++r)
    for (int p = common; p < common + r; ++p) {
      const std::byte* v = w.vb[p / w.bt] + (p % w.bt) * w.row_bytes + c * elem;
      const __m512 a = _mm512_set1_ps(att[r][p]);
      DUET_UNROLL
      for (int m = 0; m < L; ++m) acc[r][m] = _mm512_fmadd_ps(a, load16<F16>(v, m * 16), acc[r][m]);
    }
  DUET_UNROLL
  for (int r = 0; r < R; ++r) {
    DUET_UNROLL
    for (int m = 0; m < L; ++m) _mm512_storeu_ps(out[r] + c + m * 16, acc[r][m]);
  }
}

/// weighted_v_chunk_avx512 over the head, 64 output floats per chunk.
template <int R, bool F16>
DUET_AVX512F void weighted_v_head_avx512(const head_walk& w, const float* const* att, int common,
                                         float* const* out) {
  for (int c = 0; c < w.hs; c += 64) {
    switch (std::min(64, w.hs - c) / 16) {
    case 1:
      weighted_v_chunk_avx512<R, F16, 1>(w, att, common, out, c);
      break;
    case 2:
      weighted_v_chunk_avx512<R, F16, 2>(w, att, common, out, c);
      break;
    case 3:
      weighted_v_chunk_avx512<R, F16, 3>(w, att, common, out, c);
      break;
    default:
      weighted_v_chunk_avx512<R, F16, 4>(w, att, common, out, c);
    }
  }
}

template <int R>
DUET_AVX512F void weighted_v_rows_avx512(const head_walk& w, const float* const* att, int common,
                                         float* const* out) {
  if (w.f16) return weighted_v_head_avx512<R, true>(w, att, common, out);
  weighted_v_head_avx512<R, false>(w, att, common, out);
}

/// The weighted sum of V for R rows (see weighted_v_rows_avx512), in whichever registers fit.
DUET_AVX2 void weighted_v_rows(const head_walk& w, const float* const* att, int R, int common,
                               float* const* out) {
  if (wide_v(w)) {
    switch (R) {
    case 1:
      return weighted_v_rows_avx512<1>(w, att, common, out);
    case 2:
      return weighted_v_rows_avx512<2>(w, att, common, out);
    case 3:
      return weighted_v_rows_avx512<3>(w, att, common, out);
    default:
      return weighted_v_rows_avx512<4>(w, att, common, out);
    }
  }
  for (int r = 0; r < R; ++r) w.weighted_v(att[r], common + r, out[r]);
}

/// AVX2 attention for head sizes that are a multiple of 8: the same two passes as the scalar
/// version (scores, softmax, weighted sum of V), 8 lanes at a time. Scores run 8 positions at a
/// time (8 independent FMA chains instead of one latency-bound chain per position, reduced
/// together by hsum8) and the weighted sum keeps up to 64 output floats in registers across
/// all positions instead of a load and store of `out` per position (weighted_v_rows). Per position
/// and per lane the operations and their order are unchanged, so the results are those of one
/// position at a time, bit for bit. Measured (duet bench engine, stories110M q8_0, decode 1 seq, 1
/// thread, perf): attention was 20% of decode time before this. Tried and dropped (2026-11-28): one
/// task per row over all its heads, position-major (each position's whole K and V rows read once,
/// contiguous, for every head; the same bits): 32-sequence decode unchanged (620-651 vs 625-632
/// tok/s at 64-80 positions, 428-457 vs 443-448 at 64-264), prefill 128 13% slower.
DUET_AVX2 void attention_avx2(const float* q, const kv_cache& kv,
                              std::span<const std::int32_t> table, int layer, int kv_head,
                              int n_pos, float* att, float* out) {
  const head_walk w(kv, table, layer, kv_head, n_pos);
  const int hs = w.hs, bt = w.bt, nb = w.nb;
  const float scale_div = std::sqrt(static_cast<float>(hs)); // run.c divides
  // A head's K and V rows are head_bytes at a stride of a whole position (every head), in
  // blocks the table scatters: the hardware prefetchers do not follow them, and with the weights
  // streaming through the caches they come from memory. Each position's K and V lines are
  // prefetched `ahead` positions before the score loop reaches them (the V loop then finds its
  // rows in cache). The prefetch cursor walks the blocks alongside. Prefetching 32 positions
  // ahead or into L2 only measured the same.
  constexpr int ahead = 16;
  int pf_pos = 0, pf_blk = 0, pf_off = 0;
  auto prefetch_next = [&] {
    if (pf_pos < n_pos) {
      const char* k = reinterpret_cast<const char*>(w.kb[pf_blk] + pf_off * w.row_bytes);
      const char* v = reinterpret_cast<const char*>(w.vb[pf_blk] + pf_off * w.row_bytes);
      for (std::ptrdiff_t b = 0; b < w.head_bytes; b += 64) {
        _mm_prefetch(k + b, _MM_HINT_T0);
        _mm_prefetch(v + b, _MM_HINT_T0);
      }
    }
    ++pf_pos;
    if (++pf_off == bt) pf_off = 0, ++pf_blk;
  };
  for (int p = 0; p < ahead; ++p) prefetch_next();
  constexpr int P = 8; // positions per score step, reduced together by hsum8
  const __m256 divisor = _mm256_set1_ps(scale_div);
  for (int b = 0; b < nb; ++b) {
    const int b0 = b * bt, end = std::min(n_pos, b0 + bt);
    int t = b0;
    for (; t + P <= end; t += P) {
      // Position j's chain in acc[(j % 4) * 2 + j / 4], so that hsum8 returns them in order.
      const std::byte* k[P];
      __m256 acc[P];
      DUET_UNROLL
      for (int j = 0; j < P; ++j) {
        prefetch_next();
        k[(j % 4) * 2 + j / 4] = w.kb[b] + (t - b0 + j) * w.row_bytes;
        acc[j] = _mm256_setzero_ps();
      }
      for (int i = 0; i < hs; i += 8) {
        const __m256 qv = _mm256_loadu_ps(q + i);
        DUET_UNROLL
        for (int j = 0; j < P; ++j) acc[j] = _mm256_fmadd_ps(qv, w.load(k[j], i), acc[j]);
      }
      _mm256_storeu_ps(att + t, _mm256_div_ps(hsum8(acc), divisor));
    }
    for (; t < end; ++t) {
      prefetch_next();
      const std::byte* k = w.kb[b] + (t - b0) * w.row_bytes;
      __m256 acc = _mm256_setzero_ps();
      for (int i = 0; i < hs; i += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), w.load(k, i), acc);
      att[t] = hsum(acc) / scale_div;
    }
  }
  softmax(att, n_pos);
  const float* a = att;
  weighted_v_rows(w, &a, 1, n_pos, &out);
}

/// The scores of one step of positions as hsum8 returns them (rows 0 and 1 in the low half, 2
/// and 3 in the high half, each row's two positions t and t + 1 side by side), divided, into
/// the 4 rows' score arrays.
DUET_AVX2 inline void store_scores_4x2(__m256 sc, float* const* ar, int t) {
  const __m128 lo = _mm256_castps256_ps128(sc), hi = _mm256_extractf128_ps(sc, 1);
  _mm_storel_pi(reinterpret_cast<__m64*>(ar[0] + t), lo);
  _mm_storeh_pi(reinterpret_cast<__m64*>(ar[1] + t), lo);
  _mm_storel_pi(reinterpret_cast<__m64*>(ar[2] + t), hi);
  _mm_storeh_pi(reinterpret_cast<__m64*>(ar[3] + t), hi);
}

/// attention_rows_avx2's scores for 4 rows, 4 positions per step in 512-bit registers, over
/// the whole steps in [0, common); returns the first position left unscored. A register holds
/// two rows' 8-lane FMA chains for one position (rows 0 and 1, or 2 and 3, in lanes 0-7 and
/// 8-15): the queries are packed side by side once per call, and each K load is broadcast to
/// both halves and serves the 4 rows. Per (row, position) and lane the FMA chain is the 256-bit
/// tile's, reduced by the same hsum8, so the scores are the same bits, for half the FMA
/// instructions.
DUET_AVX512F int scores_4rows_avx512(const head_walk& w, const float* q, std::int64_t q_stride,
                                     float* const* ar, int common, float scale_div) {
  const int hs = w.hs, steps = hs / 8;
  // The 4 query rows as 2 pairs, 8 values of each row side by side (as a matmul's tokens).
  thread_local std::vector<float> pairs;
  pack_token_pairs(q, q_stride, 4, hs, pairs);
  const float* q0 = pairs.data();
  const float* q1 = pairs.data() + steps * 16;
  const __m256 divisor = _mm256_set1_ps(scale_div);
  int t = 0;
  for (; t + 4 <= common; t += 4) {
    const std::byte* k[4];
    __m512 acc[2][4]; // [row pair][position]
    DUET_UNROLL
    for (int j = 0; j < 4; ++j) {
      k[j] = w.k(t + j);
      acc[0][j] = acc[1][j] = _mm512_setzero_ps();
    }
    for (int s = 0; s < steps; ++s) {
      const __m512 qa = _mm512_loadu_ps(q0 + s * 16), qb = _mm512_loadu_ps(q1 + s * 16);
      DUET_UNROLL
      for (int j = 0; j < 4; ++j) {
        const __m512 kb = both_halves(w.load(k[j], 8 * s));
        acc[0][j] = _mm512_fmadd_ps(qa, kb, acc[0][j]);
        acc[1][j] = _mm512_fmadd_ps(qb, kb, acc[1][j]);
      }
    }
    DUET_UNROLL
    for (int half = 0; half < 2; ++half) { // positions t + 2 * half and the one after it
      // Row r = 2p + h, position t + 2 * half + j in v[(h * 2 + j) * 2 + p], as the 256-bit tile.
      __m256 v[8];
      DUET_UNROLL
      for (int p = 0; p < 2; ++p) {
        DUET_UNROLL
        for (int j = 0; j < 2; ++j) {
          v[j * 2 + p] = low_half(acc[p][2 * half + j]);
          v[(2 + j) * 2 + p] = high_half(acc[p][2 * half + j]);
        }
      }
      store_scores_4x2(_mm256_div_ps(hsum8(v), divisor), ar, t + 2 * half);
    }
  }
  return t;
}

/// m[i] = column i of the 16 x 16 matrix whose row i was m[i]: unpacks pair the rows' floats,
/// shuffles within 128-bit lanes make 4-row columns, and two rounds of lane shuffles gather a
/// column's 4 lanes (64 shuffles for 256 floats, where element by element was 256 loads and
/// stores at a column's stride).
DUET_AVX512F void transpose16(__m512* m) {
  // The masked forms, mask all ones: g++ 12 warns about the plain ones' undefined source.
  const __m512 z = _mm512_setzero_ps();
  __m512 t[16], u[16];
  DUET_UNROLL
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_mask_unpacklo_ps(z, 0xffff, m[2 * i], m[2 * i + 1]);
    t[2 * i + 1] = _mm512_mask_unpackhi_ps(z, 0xffff, m[2 * i], m[2 * i + 1]);
  }
  // u[4g + k], 128-bit lane L: column 4L + k of rows 4g .. 4g + 3.
  DUET_UNROLL
  for (int g = 0; g < 4; ++g) {
    u[4 * g] = _mm512_mask_shuffle_ps(z, 0xffff, t[4 * g], t[4 * g + 2], 0x44);
    u[4 * g + 1] = _mm512_mask_shuffle_ps(z, 0xffff, t[4 * g], t[4 * g + 2], 0xee);
    u[4 * g + 2] = _mm512_mask_shuffle_ps(z, 0xffff, t[4 * g + 1], t[4 * g + 3], 0x44);
    u[4 * g + 3] = _mm512_mask_shuffle_ps(z, 0xffff, t[4 * g + 1], t[4 * g + 3], 0xee);
  }
  DUET_UNROLL
  for (int k = 0; k < 4; ++k) {
    const __m512 even01 =
        _mm512_mask_shuffle_f32x4(z, 0xffff, u[k], u[4 + k], 0x88); // lanes 0, 2 of each
    const __m512 odd01 = _mm512_mask_shuffle_f32x4(z, 0xffff, u[k], u[4 + k], 0xdd); // lanes 1, 3
    const __m512 even23 = _mm512_mask_shuffle_f32x4(z, 0xffff, u[8 + k], u[12 + k], 0x88);
    const __m512 odd23 = _mm512_mask_shuffle_f32x4(z, 0xffff, u[8 + k], u[12 + k], 0xdd);
    m[k] = _mm512_mask_shuffle_f32x4(z, 0xffff, even01, even23, 0x88);
    m[4 + k] = _mm512_mask_shuffle_f32x4(z, 0xffff, odd01, odd23, 0x88);
    m[8 + k] = _mm512_mask_shuffle_f32x4(z, 0xffff, even01, even23, 0xdd);
    m[12 + k] = _mm512_mask_shuffle_f32x4(z, 0xffff, odd01, odd23, 0xdd);
  }
}

/// This head's K at positions [p_begin, p_end) as columns, f32: element d of position p at
/// cols[d * stride + p - p_begin], zeros after p_end up to the next multiple of 16 (the scores
/// read them and drop the results). 16 positions x 16 dimensions at a time through
/// transpose16; head_size a multiple of 16, stride one of 16 and at least p_end - p_begin
/// rounded up to one.
DUET_AVX512F void fill_columns(float* cols, std::int64_t stride, const head_walk& w, int p_begin,
                               int p_end) {
  for (int p0 = p_begin; p0 < p_end; p0 += 16) {
    const std::byte* k[16];
    for (int i = 0; i < 16; ++i) k[i] = p0 + i < p_end ? w.k(p0 + i) : nullptr;
    float* at = cols + (p0 - p_begin);
    for (int d0 = 0; d0 < w.hs; d0 += 16) {
      __m512 m[16];
      DUET_UNROLL
      for (int i = 0; i < 16; ++i)
        m[i] = k[i] == nullptr ? _mm512_setzero_ps()
               : w.f16         ? load16<true>(k[i], d0)
                               : load16<false>(k[i], d0);
      transpose16(m);
      DUET_UNROLL
      for (int d = 0; d < 16; ++d) _mm512_storeu_ps(at + (d0 + d) * stride, m[d]);
    }
  }
}

/// The scores of R rows (R <= 4) at the 16 positions from p0 on, from K as columns (`col` is
/// the columns at p0): lane l of the head (the dimensions l, l + 8, l + 16, ...) has one
/// accumulator per row, and its FMA chain runs over the dimensions in the order of the 8-lane
/// chains of attention_avx2; the 8 lanes are then added in hsum's pairs ((0 + 4) + (2 + 6)) +
/// ((1 + 5) + (3 + 7)), across registers instead of within one. So each score is the same float
/// as attention()'s, with no shuffle. Lanes go in two halves, {0, 4, 2, 6} then {1, 5, 3, 7}, so
/// that 4 rows x 4 lanes of accumulators fit in registers. Row r's scores for positions before
/// common + r go to ar[r]; the rest are dropped.
template <int R>
DUET_AVX512F void scores_block_avx512(const float* col, std::int64_t stride, int hs,
                                      const float* const* qr, float* const* ar, int common, int p0,
                                      __m512 divisor) {
  const int steps = hs / 8;
  __m512 half_sum[2][R];
  DUET_UNROLL
  for (int half = 0; half < 2; ++half) {
    constexpr int order[4] = {0, 4, 2, 6};
    __m512 acc[4][R];
    DUET_UNROLL
    for (int j = 0; j < 4; ++j) {
      DUET_UNROLL
      for (int r = 0; r < R; ++r) acc[j][r] = _mm512_setzero_ps();
    }
    for (int s = 0; s < steps; ++s) {
      DUET_UNROLL
      for (int j = 0; j < 4; ++j) {
        const int d = 8 * s + order[j] + half;
        const __m512 k = _mm512_loadu_ps(col + d * stride);
        DUET_UNROLL
        for (int r = 0; r < R; ++r)
          acc[j][r] = _mm512_fmadd_ps(_mm512_set1_ps(qr[r][d]), k, acc[j][r]);
      }
    }
    DUET_UNROLL
    for (int r = 0; r < R; ++r)
      half_sum[half][r] =
          _mm512_add_ps(_mm512_add_ps(acc[0][r], acc[1][r]), _mm512_add_ps(acc[2][r], acc[3][r]));
  }
  DUET_UNROLL
  for (int r = 0; r < R; ++r) {
    const int left = common + r - p0;
    if (left <= 0) continue;
    const auto mask = static_cast<__mmask16>(left >= 16 ? 0xffff : (1u << left) - 1);
    _mm512_mask_storeu_ps(ar[r] + p0, mask,
                          _mm512_div_ps(_mm512_add_ps(half_sum[0][r], half_sum[1][r]), divisor));
  }
}

/// Fewest rows for which attention_rows turns K into columns: the transposition takes about as
/// many instructions as 4 rows' score FMAs (a quarter of one per float each), once per call.
constexpr int columns_min_rows = 8;

/// Positions of K as columns at a time (attention_columns_avx512): ~260 KiB per 64 of head size.
constexpr int columns_window = 1024;

/// attention_rows for a prefill chunk of one head (rows >= columns_min_rows, head size a
/// multiple of 16, AVX-512): the scores from K as columns (fill_columns), a window of positions
/// at a time, and within it blocks of 16 positions outermost and the 4-row groups inside, so
/// that a block's K stays in L1 for every group; then softmax and the weighted sums of V group
/// by group (weighted_v_rows). Every score and output float goes through the same operations in
/// the same order as attention(), so the same bits. Measured (a scratch program timing this
/// kernel on one layer of a 512-token prefill in chunks of 64 rows, stories110M's 12 heads of
/// 64, 1 thread, the Xeon VM of 2026-11-29): 6.83 -> 5.95 ms per layer with f32 K and V, 7.96 ->
/// 6.25 with f16, against 4-row calls of the 4-row tile (scores_4rows_avx512), whose horizontal
/// sums cost about as much as its FMAs (perf annotate).
DUET_AVX512F void attention_columns_avx512(const head_walk& w, const float* q,
                                           std::int64_t q_stride, int n_pos0, int rows, float* att,
                                           std::int64_t att_stride, float* out,
                                           std::int64_t out_stride, float scale_div) {
  const int hs = w.hs, n = n_pos0 + rows - 1;
  // One line past a multiple of 16: at a power-of-two stride (1024 positions, 4 KiB) all
  // columns fall in the same cache sets (filling them float by float then took longer than the
  // scores, perf).
  const std::int64_t stride = (std::min(n, columns_window) + 15) / 16 * 16 + 16;
  thread_local std::vector<float> columns;
  if (columns.size() < static_cast<std::size_t>(stride * hs))
    columns.resize(static_cast<std::size_t>(stride * hs));
  const __m512 divisor = _mm512_set1_ps(scale_div);
  // Group r0's query rows, score rows and output rows; returns how many rows it has.
  auto group = [&](int r0, const float** qr, float** ar, float** outs) {
    const int R = std::min(4, rows - r0);
    for (int r = 0; r < R; ++r) {
      qr[r] = q + (r0 + r) * q_stride;
      ar[r] = att + (r0 + r) * att_stride;
      outs[r] = out + (r0 + r) * out_stride;
    }
    return R;
  };
  for (int w0 = 0; w0 < n; w0 += columns_window) {
    fill_columns(columns.data(), stride, w, w0, std::min(n, w0 + columns_window));
    for (int p0 = w0; p0 < std::min(n, w0 + columns_window); p0 += 16)
      for (int r0 = 0; r0 < rows; r0 += 4) {
        const float* qr[4];
        float* ar[4];
        float* outs[4];
        const int R = group(r0, qr, ar, outs), common = n_pos0 + r0;
        if (common + R - 1 <= p0) continue; // no row of this group reaches the block
        const float* col = columns.data() + (p0 - w0);
        switch (R) {
        case 1:
          scores_block_avx512<1>(col, stride, hs, qr, ar, common, p0, divisor);
          break;
        case 2:
          scores_block_avx512<2>(col, stride, hs, qr, ar, common, p0, divisor);
          break;
        case 3:
          scores_block_avx512<3>(col, stride, hs, qr, ar, common, p0, divisor);
          break;
        default:
          scores_block_avx512<4>(col, stride, hs, qr, ar, common, p0, divisor);
        }
      }
  }
  for (int r0 = 0; r0 < rows; r0 += 4) {
    const float* qr[4];
    float* ar[4];
    float* outs[4];
    const int R = group(r0, qr, ar, outs), common = n_pos0 + r0;
    for (int r = 0; r < R; ++r) softmax(ar[r], common + r);
    weighted_v_rows(w, ar, R, common, outs);
  }
}

/// attention_rows for up to 4 rows at a time: the scores of 4 rows x 2 positions per step (8
/// FMA chains; each K load serves 4 rows, each query load 2 positions); the positions only the
/// later rows see (causal) one row at a time. Per (row, position) the same FMA chain and the
/// same additions to reduce it (hsum8 or hsum) as attention_avx2, so the same bits; the weighted
/// sums of V go through weighted_v_rows for the group.
DUET_AVX2 void attention_rows_avx2(const float* q, std::int64_t q_stride, const kv_cache& kv,
                                   std::span<const std::int32_t> table, int layer, int kv_head,
                                   int n_pos0, int rows, float* att, std::int64_t att_stride,
                                   float* out, std::int64_t out_stride) {
  const head_walk w(kv, table, layer, kv_head, n_pos0 + rows - 1);
  const int hs = w.hs;
  const float scale_div = std::sqrt(static_cast<float>(hs)); // run.c divides
  if (rows >= columns_min_rows && hs % 16 == 0 && current_simd() == simd::avx512_vnni)
    return attention_columns_avx512(w, q, q_stride, n_pos0, rows, att, att_stride, out, out_stride,
                                    scale_div);
  auto score = [&](const float* qr, int t) DUET_AVX2 {
    const std::byte* k = w.k(t);
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < hs; i += 8)
      acc = _mm256_fmadd_ps(_mm256_loadu_ps(qr + i), w.load(k, i), acc);
    return hsum(acc) / scale_div;
  };
  for (int r0 = 0; r0 < rows; r0 += 4) {
    const int R = std::min(4, rows - r0);
    const int common = n_pos0 + r0; // positions every row of this group attends to
    const float* qr[4];
    float* ar[4];
    for (int r = 0; r < R; ++r) {
      qr[r] = q + (r0 + r) * q_stride;
      ar[r] = att + (r0 + r) * att_stride;
    }
    int t = 0;
    if (R == 4) {
      if (current_simd() == simd::avx512_vnni)
        t = scores_4rows_avx512(w, qr[0], q_stride, ar, common, scale_div);
      const __m256 divisor = _mm256_set1_ps(scale_div);
      for (; t + 2 <= common; t += 2) {
        const std::byte* k0 = w.k(t);
        const std::byte* k1 = w.k(t + 1);
        // Row r, position t + j in acc[(r % 2 * 2 + j) * 2 + r / 2]: hsum8 returns rows 0 and 1
        // in the low half, 2 and 3 in the high half, each row's two positions side by side.
        __m256 acc[8];
        DUET_UNROLL
        for (int m = 0; m < 8; ++m) acc[m] = _mm256_setzero_ps();
        for (int i = 0; i < hs; i += 8) {
          const __m256 kv0 = w.load(k0, i), kv1 = w.load(k1, i);
          DUET_UNROLL
          for (int r = 0; r < 4; ++r) {
            const __m256 qv = _mm256_loadu_ps(qr[r] + i);
            const int m = (r % 2 * 2) * 2 + r / 2;
            acc[m] = _mm256_fmadd_ps(qv, kv0, acc[m]);
            acc[m + 2] = _mm256_fmadd_ps(qv, kv1, acc[m + 2]);
          }
        }
        store_scores_4x2(_mm256_div_ps(hsum8(acc), divisor), ar, t);
      }
    }
    float* outs[4];
    const float* atts[4];
    for (int r = 0; r < R; ++r) {
      for (int p = t; p < common + r; ++p) ar[r][p] = score(qr[r], p);
      softmax(ar[r], common + r);
      atts[r] = ar[r];
      outs[r] = out + (r0 + r) * out_stride;
    }
    weighted_v_rows(w, atts, R, common, outs);
  }
}

DUET_AVX2 void matmul_avx2(const tensor_view& w, const matmul_input& in, float* y,
                           std::int64_t y_stride, std::int64_t row_begin, std::int64_t row_end) {
  if (w.type == dtype::q8_0) {
    switch (current_simd()) {
    case simd::avx_vnni:
      return q8_avx_vnni::matmul_q8_0(w, in, y, y_stride, row_begin, row_end);
    case simd::avx512_vnni:
      return q8_avx512_vnni::matmul_q8_0(w, in, y, y_stride, row_begin, row_end);
    default:
      return q8_avx2::matmul_q8_0(w, in, y, y_stride, row_begin, row_end);
    }
  }
  const float* x = in.x();
  const std::int64_t x_stride = in.x_stride();
  const int n = in.n();
  constexpr int R = tile_rows;
  if (n == 1) {
    // 8 rows at a time: 8 independent FMA chains keep both FMA pipes busy.
    std::int64_t r = row_begin;
    for (; r + 2 * R <= row_end; r += 2 * R) gemv_group<2 * R>(w, r, x, y);
    for (; r + R <= row_end; r += R) gemv_group<R>(w, r, x, y);
    for (; r < row_end; ++r) gemv_group<1>(w, r, x, y);
    return;
  }
  // Per-thread scratch for R dequantized rows: grows to the widest matrix once, then reused
  // (no allocation per call after the first).
  thread_local std::vector<float> scratch;
  if (w.type != dtype::f32 && scratch.size() < static_cast<std::size_t>(R * w.cols))
    scratch.resize(static_cast<std::size_t>(R * w.cols));
  // 512-bit tiles take 12 tokens at a time: with fewer there is nothing for them.
  thread_local std::vector<float> pairs;
  const bool wide = current_simd() == simd::avx512_vnni && n >= 12 && row_end - row_begin >= R;
  if (wide) pack_token_pairs(x, x_stride, n, w.cols, pairs);
  const float* p = wide ? pairs.data() : nullptr;
  std::int64_t r = row_begin;
  for (; r + R <= row_end; r += R) row_group<R>(w, r, x, x_stride, n, y, y_stride, scratch, p);
  for (; r < row_end; ++r) row_group<1>(w, r, x, x_stride, n, y, y_stride, scratch, nullptr);
}
#endif

} // namespace

std::string_view simd_name(simd level) {
  switch (level) {
  case simd::scalar:
    return "scalar";
  case simd::avx2:
    return "avx2";
  case simd::avx512_vnni:
    return "avx2+avx512vnni";
  case simd::avx_vnni:
    return "avx2+avxvnni";
  }
  return "?";
}

simd best_simd() {
  return widest_at_or_below(simd::avx512_vnni);
}

simd current_simd() {
  return widest_at_or_below(simd_limit.load(std::memory_order_relaxed));
}

std::string_view simd_level() {
  return simd_name(current_simd());
}

void set_simd_limit(simd limit) {
  simd_limit.store(limit, std::memory_order_relaxed);
}

void matmul_input::reset(const float* x, std::int64_t x_stride, int n, std::int64_t cols,
                         bool quantize) {
  x_ = x;
  x_stride_ = x_stride;
  n_ = n;
  cols_ = cols;
  quantized_ = quantize;
  if (!quantize) return;
  const auto blocks = static_cast<std::size_t>(n) * static_cast<std::size_t>(cols / 32);
  if (q8_.size() < blocks) q8_.resize(blocks);
  if (q8_bias_.size() < blocks) q8_bias_.resize(blocks);
}

void matmul_input::quantize_rows(int t_begin, int t_end) {
  if (!quantized_ || t_begin >= t_end) return;
#ifdef DUET_X86
  if (use_simd())
    quantize_activations_avx2(x_, x_stride_, cols_, t_begin, t_end, q8_.data());
  else
#endif
    quantize_activations(x_, x_stride_, cols_, t_begin, t_end, q8_.data());
  const std::int64_t blocks = cols_ / 32;
  for (std::int64_t i = t_begin * blocks; i < t_end * blocks; ++i) {
    std::int32_t sum = 0;
    for (int k = 0; k < 32; ++k) sum += q8_[static_cast<std::size_t>(i)].qs[k];
    q8_bias_[static_cast<std::size_t>(i)] = -128 * sum;
  }
}

void matmul(const tensor_view& w, const matmul_input& in, float* y, std::int64_t y_stride,
            std::int64_t row_begin, std::int64_t row_end) {
  if (in.cols() != w.cols) // the kernels would read past the input's rows
    throw engine_error(engine_errc::invalid_argument,
                       "matmul: input has " + std::to_string(in.cols()) + " columns, matrix " +
                           std::to_string(w.cols));
  if (w.type == dtype::q8_0 && !in.quantized()) {
    thread_local matmul_input q;
    q.reset(in.x(), in.x_stride(), in.n(), in.cols(), true);
    q.quantize_rows(0, in.n());
    return matmul(w, q, y, y_stride, row_begin, row_end);
  }
#ifdef DUET_X86
  if (use_simd()) return matmul_avx2(w, in, y, y_stride, row_begin, row_end);
#endif
  matmul_scalar(w, in, y, y_stride, row_begin, row_end);
}

void matmul(const tensor_view& w, const float* x, std::int64_t x_stride, int n, float* y,
            std::int64_t y_stride, std::int64_t row_begin, std::int64_t row_end) {
  thread_local matmul_input in;
  in.reset(x, x_stride, n, w.cols, w.type == dtype::q8_0);
  in.quantize_rows(0, n);
  matmul(w, in, y, y_stride, row_begin, row_end);
}

namespace {
/// rmsnorm's scaling, once the row's sum of squares is known. The SIMD levels take 8 values per
/// step with the scalar loop's two multiplies in its order (no FMA), so the same bits: g++ -O2
/// left the loop scalar (out may alias x), and it was most of rmsnorm_rows' time in a prefill
/// (perf annotate).
void rmsnorm_scale(float* out, const float* x, const float* weight, int size, float eps, float ss) {
  ss /= static_cast<float>(size);
  ss += eps;
  ss = 1.0f / std::sqrt(ss);
  int j = 0;
#ifdef DUET_X86
  if (use_simd()) j = rmsnorm_scale_avx2(out, x, weight, size, ss);
#endif
  for (; j < size; ++j) out[j] = weight[j] * (ss * x[j]);
}
} // namespace

void rmsnorm(float* out, const float* x, const float* weight, int size, float eps) {
  float ss = 0.0f;
  for (int j = 0; j < size; ++j) ss += x[j] * x[j];
  rmsnorm_scale(out, x, weight, size, eps, ss);
}

// The sum of squares is one chain of dependent additions, in run.c's order (its bits are the
// reference): about 4 cycles per value, for 768 values a row. Four rows' chains side by side
// overlap those latencies, each row's additions in the same order. Compiled without FMA (no
// target attribute), as rmsnorm, so x * x is rounded before each addition in both.
void rmsnorm_rows(float* out, const float* x, std::int64_t stride, int rows, const float* weight,
                  int size, float eps) {
  int r = 0;
  for (; r + 4 <= rows; r += 4) {
    const float* x0 = x + r * stride;
    const float* x1 = x0 + stride;
    const float* x2 = x1 + stride;
    const float* x3 = x2 + stride;
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    for (int j = 0; j < size; ++j) {
      s0 += x0[j] * x0[j];
      s1 += x1[j] * x1[j];
      s2 += x2[j] * x2[j];
      s3 += x3[j] * x3[j];
    }
    const float sums[4] = {s0, s1, s2, s3};
    for (int k = 0; k < 4; ++k)
      rmsnorm_scale(out + (r + k) * stride, x + (r + k) * stride, weight, size, eps, sums[k]);
  }
  for (; r < rows; ++r) rmsnorm(out + r * stride, x + r * stride, weight, size, eps);
}

void add_to(float* x, const float* y, int n) {
  int i = 0;
#ifdef DUET_X86
  if (use_simd()) i = add_to_avx2(x, y, n);
#endif
  for (; i < n; ++i) x[i] += y[i];
}

void f32_to_f16_row(const float* x, std::uint16_t* out, int n) {
  int i = 0;
#ifdef DUET_X86
  if (use_simd()) i = f32_to_f16_avx2(x, out, n);
#endif
  for (; i < n; ++i) out[i] = f32_to_f16(x[i]);
}

int argmax(const float* x, int size) {
#ifdef DUET_X86
  if (use_simd()) return argmax_avx2(x, size);
#endif
  int best = 0;
  for (int i = 1; i < size; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

void softmax(float* x, int size) {
#ifdef DUET_X86
  if (use_simd()) return softmax_avx2(x, size);
#endif
  float max_val = x[0];
  for (int i = 1; i < size; ++i)
    if (x[i] > max_val) max_val = x[i];
  float sum = 0.0f;
  for (int i = 0; i < size; ++i) {
    x[i] = std::exp(x[i] - max_val);
    sum += x[i];
  }
  for (int i = 0; i < size; ++i) x[i] /= sum;
}

void silu_mul(float* h1, const float* h3, int size) {
  int i = 0;
#ifdef DUET_X86
  if (use_simd()) i = silu_mul_avx2(h1, h3, size);
#endif
  for (; i < size; ++i) {
    float val = h1[i];
    val *= 1.0f / (1.0f + std::exp(-val)); // silu, as run.c
    h1[i] = val * h3[i];
  }
}

void exp_rows(float* x, int size) {
  int i = 0;
#ifdef DUET_X86
  if (use_simd())
    for (; i + 8 <= size; i += 8) store_exp_avx2(x + i);
#endif
  for (; i < size; ++i) x[i] = std::exp(x[i]);
}

void dequantize_row(const tensor_view& w, std::int64_t r, float* out) {
  const std::uint8_t* row = w.row(r);
  if (w.type == dtype::f32) {
    std::memcpy(out, row, static_cast<std::size_t>(w.cols) * 4);
    return;
  }
  for (std::int64_t k = 0; k < w.cols; ++k) out[k] = weight_at(w.type, row, k);
}

void attention(const float* q, const kv_cache& kv, std::span<const std::int32_t> table, int layer,
               int kv_head, int n_pos, float* att, float* out) {
#ifdef DUET_X86
  if (use_simd() && kv.config().head_size % 8 == 0)
    return attention_avx2(q, kv, table, layer, kv_head, n_pos, att, out);
#endif
  const int hs = kv.config().head_size;
  const float scale_div = std::sqrt(static_cast<float>(hs)); // run.c divides
  const bool f16 = kv.config().type == dtype::f16;
  for (int t = 0; t < n_pos; ++t) {
    const std::byte* k = kv.k_row(table, layer, t);
    float score = 0.0f;
    if (f16) {
      const auto* kh = reinterpret_cast<const std::uint16_t*>(k) + kv_head * hs;
      for (int i = 0; i < hs; ++i) score += q[i] * f16_to_f32(kh[i]);
    } else {
      const auto* kf = reinterpret_cast<const float*>(k) + kv_head * hs;
      for (int i = 0; i < hs; ++i) score += q[i] * kf[i];
    }
    att[t] = score / scale_div;
  }
  softmax(att, n_pos);
  for (int i = 0; i < hs; ++i) out[i] = 0.0f;
  for (int t = 0; t < n_pos; ++t) {
    const std::byte* v = kv.v_row(table, layer, t);
    const float a = att[t];
    if (f16) {
      const auto* vh = reinterpret_cast<const std::uint16_t*>(v) + kv_head * hs;
      for (int i = 0; i < hs; ++i) out[i] += a * f16_to_f32(vh[i]);
    } else {
      const auto* vf = reinterpret_cast<const float*>(v) + kv_head * hs;
      for (int i = 0; i < hs; ++i) out[i] += a * vf[i];
    }
  }
}

void attention_rows(const float* q, std::int64_t q_stride, const kv_cache& kv,
                    std::span<const std::int32_t> table, int layer, int kv_head, int n_pos0,
                    int rows, float* att, std::int64_t att_stride, float* out,
                    std::int64_t out_stride) {
#ifdef DUET_X86
  if (use_simd() && kv.config().head_size % 8 == 0)
    return attention_rows_avx2(q, q_stride, kv, table, layer, kv_head, n_pos0, rows, att,
                               att_stride, out, out_stride);
#endif
  for (int r = 0; r < rows; ++r)
    attention(q + r * q_stride, kv, table, layer, kv_head, n_pos0 + r, att + r * att_stride,
              out + r * out_stride);
}

void rope_table(float* table, int seq_len, int head_size, float theta) {
  for (int pos = 0; pos < seq_len; ++pos)
    for (int i = 0; i < head_size; i += 2) {
      // run.c: freq = 1 / powf(10000, head_dim / (float)head_size); val = pos * freq
      float freq = 1.0f / std::pow(theta, static_cast<float>(i) / static_cast<float>(head_size));
      float val = static_cast<float>(pos) * freq;
      float* c = table + (static_cast<std::size_t>(pos) * static_cast<std::size_t>(head_size / 2) +
                          static_cast<std::size_t>(i / 2)) *
                             2;
      c[0] = std::cos(val);
      c[1] = std::sin(val);
    }
}

// Head by head: the pair's place in its head without an integer division per pair (rope, with
// one, was 2.7% of a 512-token prefill's samples: perf, stories110M q8_0, 1 thread). The SIMD
// levels rotate 4 pairs per step (rope_avx2); the scalar loop takes a head's last pairs.
void rope(float* vec, int size, int head_size, const float* table_at_pos) {
  for (int h = 0; h < size; h += head_size) {
    float* v = vec + h;
    int i = 0;
#ifdef DUET_X86
    if (use_simd()) i = rope_avx2(v, head_size, table_at_pos);
#endif
    for (; i < head_size; i += 2) {
      const float* c = table_at_pos + i;
      const float v0 = v[i], v1 = v[i + 1];
      v[i] = v0 * c[0] - v1 * c[1];
      v[i + 1] = v0 * c[1] + v1 * c[0];
    }
  }
}

} // namespace duet::engine::kernels
