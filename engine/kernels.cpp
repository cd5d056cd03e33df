// Numeric kernels: scalar definitions plus a runtime-dispatched AVX2/FMA/F16C matmul.
#include "engine/kernels.hpp"

#include <atomic>
#include <cmath>
#include <cstring>
#include <type_traits>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define DUET_X86 1
#endif

namespace duet::engine::kernels {

namespace {

std::atomic<bool> force_scalar{false};

bool cpu_has_avx2() {
#ifdef DUET_X86
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return has;
#else
  return false;
#endif
}

bool use_simd() {
  return cpu_has_avx2() && !force_scalar.load(std::memory_order_relaxed);
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

void matmul_scalar(const tensor_view& w, const float* x, std::int64_t x_stride, int n, float* y,
                   std::int64_t y_stride, std::int64_t row_begin, std::int64_t row_end) {
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

struct load_f32 {
  DUET_AVX2 static __m256 load(const std::uint8_t* row, std::int64_t k) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + k);
  }
};
struct load_f16 {
  DUET_AVX2 static __m256 load(const std::uint8_t* row, std::int64_t k) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k * 2)));
  }
};
struct load_q8_0 {
  DUET_AVX2 static __m256 load(const std::uint8_t* row, std::int64_t k) {
    const auto* b = reinterpret_cast<const q8_0_block*>(row) + k / 32;
    __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b->qs + k % 32));
    __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
    return _mm256_mul_ps(f, _mm256_set1_ps(_cvtsh_ss(b->d)));
  }
};

DUET_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/// R weight rows x NT tokens: R*NT dot products sharing every load.
template <class L, int R, int NT>
DUET_AVX2 void tile(const tensor_view& w, std::int64_t r0, const float* x, std::int64_t x_stride,
                    int t0, float* y, std::int64_t y_stride) {
  const std::int64_t cols = w.cols;
  const std::int64_t cols8 = cols & ~std::int64_t{7};
  const std::uint8_t* rows[R];
  const float* xs[NT];
  for (int i = 0; i < R; ++i) rows[i] = w.row(r0 + i);
  for (int j = 0; j < NT; ++j) xs[j] = x + static_cast<std::int64_t>(t0 + j) * x_stride;
  __m256 acc[R][NT];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < NT; ++j) acc[i][j] = _mm256_setzero_ps();
  for (std::int64_t k = 0; k < cols8; k += 8) {
    __m256 wv[R];
    for (int i = 0; i < R; ++i) wv[i] = L::load(rows[i], k);
    for (int j = 0; j < NT; ++j) {
      __m256 xv = _mm256_loadu_ps(xs[j] + k);
      for (int i = 0; i < R; ++i) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
    }
  }
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < NT; ++j) {
      float sum = hsum(acc[i][j]);
      for (std::int64_t k = cols8; k < cols; ++k) sum += weight_at(w.type, rows[i], k) * xs[j][k];
      y[static_cast<std::int64_t>(t0 + j) * y_stride + r0 + i] = sum;
    }
}

/// Q8_0 tile: the scale of each 32-value block is converted once per block and row, then the
/// block's 4 x 8 quants are dequantized (q * d, exact) and multiplied with the activations.
template <int R, int NT>
DUET_AVX2 void tile_q8_0(const tensor_view& w, std::int64_t r0, const float* x,
                         std::int64_t x_stride, int t0, float* y, std::int64_t y_stride) {
  const std::int64_t blocks = w.cols / 32;
  const q8_0_block* rows[R];
  const float* xs[NT];
  for (int i = 0; i < R; ++i) rows[i] = reinterpret_cast<const q8_0_block*>(w.row(r0 + i));
  for (int j = 0; j < NT; ++j) xs[j] = x + static_cast<std::int64_t>(t0 + j) * x_stride;
  __m256 acc[R][NT];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < NT; ++j) acc[i][j] = _mm256_setzero_ps();
  for (std::int64_t b = 0; b < blocks; ++b) {
    float d[R];
    for (int i = 0; i < R; ++i) d[i] = _cvtsh_ss(rows[i][b].d);
    for (int sub = 0; sub < 4; ++sub) {
      __m256 wv[R];
      for (int i = 0; i < R; ++i) {
        __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(rows[i][b].qs + sub * 8));
        wv[i] =
            _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), _mm256_broadcast_ss(&d[i]));
      }
      for (int j = 0; j < NT; ++j) {
        __m256 xv = _mm256_loadu_ps(xs[j] + b * 32 + sub * 8);
        for (int i = 0; i < R; ++i) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
      }
    }
  }
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < NT; ++j)
      y[static_cast<std::int64_t>(t0 + j) * y_stride + r0 + i] = hsum(acc[i][j]);
}

template <class L>
DUET_AVX2 void matmul_avx2_typed(const tensor_view& w, const float* x, std::int64_t x_stride, int n,
                                 float* y, std::int64_t y_stride, std::int64_t row_begin,
                                 std::int64_t row_end) {
  constexpr int R = 4, NT = 2;
  constexpr bool q8 = std::is_same_v<L, load_q8_0>;
  auto run = [&]<int RR, int NN>(std::int64_t r, int t) {
    if constexpr (q8)
      tile_q8_0<RR, NN>(w, r, x, x_stride, t, y, y_stride);
    else
      tile<L, RR, NN>(w, r, x, x_stride, t, y, y_stride);
  };
  std::int64_t r = row_begin;
  for (; r + R <= row_end; r += R) {
    int t = 0;
    for (; t + NT <= n; t += NT) run.template operator()<R, NT>(r, t);
    for (; t < n; ++t) run.template operator()<R, 1>(r, t);
  }
  for (; r < row_end; ++r) {
    int t = 0;
    for (; t + NT <= n; t += NT) run.template operator()<1, NT>(r, t);
    for (; t < n; ++t) run.template operator()<1, 1>(r, t);
  }
}

void matmul_avx2(const tensor_view& w, const float* x, std::int64_t x_stride, int n, float* y,
                 std::int64_t y_stride, std::int64_t row_begin, std::int64_t row_end) {
  switch (w.type) {
  case dtype::f32:
    return matmul_avx2_typed<load_f32>(w, x, x_stride, n, y, y_stride, row_begin, row_end);
  case dtype::f16:
    return matmul_avx2_typed<load_f16>(w, x, x_stride, n, y, y_stride, row_begin, row_end);
  case dtype::q8_0:
    return matmul_avx2_typed<load_q8_0>(w, x, x_stride, n, y, y_stride, row_begin, row_end);
  }
}
#endif

} // namespace

std::string_view simd_level() {
  return use_simd() ? "avx2" : "scalar";
}

void set_force_scalar(bool on) {
  force_scalar.store(on, std::memory_order_relaxed);
}

void matmul(const tensor_view& w, const float* x, std::int64_t x_stride, int n, float* y,
            std::int64_t y_stride, std::int64_t row_begin, std::int64_t row_end) {
#ifdef DUET_X86
  if (use_simd()) return matmul_avx2(w, x, x_stride, n, y, y_stride, row_begin, row_end);
#endif
  matmul_scalar(w, x, x_stride, n, y, y_stride, row_begin, row_end);
}

void rmsnorm(float* out, const float* x, const float* weight, int size, float eps) {
  float ss = 0.0f;
  for (int j = 0; j < size; ++j) ss += x[j] * x[j];
  ss /= static_cast<float>(size);
  ss += eps;
  ss = 1.0f / std::sqrt(ss);
  for (int j = 0; j < size; ++j) out[j] = weight[j] * (ss * x[j]);
}

void softmax(float* x, int size) {
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

void rope(float* vec, int size, int head_size, const float* table_at_pos) {
  for (int i = 0; i < size; i += 2) {
    const float* c = table_at_pos + (i % head_size) / 2 * 2;
    float v0 = vec[i], v1 = vec[i + 1];
    vec[i] = v0 * c[0] - v1 * c[1];
    vec[i + 1] = v0 * c[1] + v1 * c[0];
  }
}

} // namespace duet::engine::kernels
