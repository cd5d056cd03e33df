#pragma once

// The forward pass's numeric kernels. Each has a plain scalar definition (the reference the
// tests check against, tests/engine/kernels_test.cpp) and, for matmul, attention, softmax,
// SiLU, argmax, RoPE, RMSNorm's scaling, add_to and the f16 row conversion, an AVX2+FMA+F16C
// version picked at run time when the CPU has those (the build stays portable: no -march); q8_0
// matmul also has AVX-VNNI and AVX512-VNNI versions (see simd below).
//
// Matmul of Q8_0 weights works as ggml's does: the activations are quantized to 8 bits per
// 32-value block (d = max|x| / 127), each block's dot product is exact in integers and scaled
// by d_w * d_x. That rounding of the activations is the only difference from an f32 reference
// beyond summation order; tests/engine/kernels_test.cpp bounds it per row. It is ~2x fewer
// instructions than dequantizing to f32, which single-sequence decode needs to get near the
// memory roofline. Rows a tensor_view also has packed 8 at a time, in pairs of such groups
// (tensor_view::q8_packed, engine/q8_pack.hpp; the GGUF loader packs every q8_0 matrix) are
// multiplied from the packed copy: one vpdpbusd then advances 8 rows (16 in 512-bit registers),
// and their scaling is 3 instructions.
//
// Every matmul gives a (row, token) result that depends on that row and token only, bit for bit,
// whether the token is multiplied alone or with others: a sequence's greedy tokens do not depend
// on what else a decode lane batches with it.

#include "engine/dtype.hpp"
#include "engine/kv_cache.hpp"
#include "engine/model_weights.hpp"

#include <cstdint>
#include <string_view>
#include <vector>

namespace duet::engine::kernels {

/// The instruction sets the kernels can use, in order of preference. avx2 means AVX2 + FMA +
/// F16C; the two VNNI levels add one instruction for q8_0's integer dot product (AVX-VNNI, or
/// the 256-bit form of AVX512-VNNI with AVX512VL) and give results bit-identical to avx2.
/// AVX512-VNNI comes last (most preferred): its EVEX encoding has 32 vector registers, room for
/// 4-row q8_0 tiles (measured: prefill 128 on stories110M q8_0, 1 thread, 485-492 tok/s against
/// 405-456 with AVX-VNNI's 2-row tiles), and 512-bit registers, which take packed q8_0 groups in
/// pairs (16 rows per vpdpbusd; needs AVX512F and AVX512BW too).
enum class simd { scalar, avx2, avx_vnni, avx512_vnni };

/// "scalar", "avx2", "avx2+avx512vnni" or "avx2+avxvnni".
std::string_view simd_name(simd level);

/// The most preferred level this CPU (and OS) supports.
simd best_simd();

/// The level in use: the most preferred one this CPU supports at or below the limit.
simd current_simd();

/// simd_name(current_simd()).
std::string_view simd_level();

/// Caps the kernels at `limit` (default: none). Tests compare the paths; benchmarks show the
/// gains. Not meant to change while other threads run kernels.
void set_simd_limit(simd limit);

/// y[t][r] = sum_k W[r][k] * x[t][k] for t in [0, n) and rows r in [row_begin, row_end).
/// W is [rows][cols] of any dtype; x is [n][cols] with row stride x_stride (>= cols); y has
/// row stride y_stride (>= the rows written). Each weight row is read once for all n tokens.
/// For q8_0 weights x is quantized by every call (see matmul_input to do it once).
void matmul(const tensor_view& w, const float* x, std::int64_t x_stride, int n, float* y,
            std::int64_t y_stride, std::int64_t row_begin, std::int64_t row_end);

/// 32 activations quantized for the q8_0 dot product: x[i] ~= d * qs[i], qs in [-127, 127].
struct q8_activation_block {
  float d;
  std::int8_t qs[32];
};

/// The activations of several matmuls, prepared once: x as given and, for q8_0 weights, its
/// 8-bit quantization (d = max|x| / 127 per 32 values, as ggml) with each block's sum, which
/// the VNNI kernels subtract. The forward pass multiplies one x by several matrices (q, k, v;
/// w1, w3) on every thread of its pool: quantizing per matmul call did that work up to 6 times
/// per input (measured: stories110M q8_0, 2 threads, quantization was 5% of all samples, with
/// the block sums inside the matmul itself besides). Rows are quantized independently, so
/// threads may split them; the values are those matmul(w, x, ...) computes.
class matmul_input {
public:
  /// Points at x[n][cols] (row stride x_stride) and sizes the quantized copy when `quantize`
  /// (a q8_0 matrix will be multiplied; cols must then be a multiple of 32). Allocates only when
  /// n * cols outgrows every earlier use.
  void reset(const float* x, std::int64_t x_stride, int n, std::int64_t cols, bool quantize);
  /// Quantizes rows [t_begin, t_end) (no-op unless reset asked for it); disjoint ranges may run
  /// on different threads. Every row must be quantized before a matmul reads this input.
  void quantize_rows(int t_begin, int t_end);

  const float* x() const { return x_; }
  std::int64_t x_stride() const { return x_stride_; }
  int n() const { return n_; }
  std::int64_t cols() const { return cols_; }
  bool quantized() const { return quantized_; }
  const q8_activation_block* q8() const { return q8_.data(); }
  /// [n][cols / 32]: -128 * the sum of the block's qs, where a VNNI dot product with the
  /// weights stored unsigned (w + 128) starts.
  const std::int32_t* q8_bias() const { return q8_bias_.data(); }

private:
  const float* x_ = nullptr;
  std::int64_t x_stride_ = 0;
  int n_ = 0;
  std::int64_t cols_ = 0;
  bool quantized_ = false;
  std::vector<q8_activation_block> q8_;
  std::vector<std::int32_t> q8_bias_;
};

/// matmul() of a prepared input: x read from `in` and, for q8_0 weights, its quantized rows
/// (an input prepared without quantization is quantized by this call, as matmul() does).
/// Throws engine_error(invalid_argument) when in.cols() is not w.cols.
void matmul(const tensor_view& w, const matmul_input& in, float* y, std::int64_t y_stride,
            std::int64_t row_begin, std::int64_t row_end);

/// out = x / sqrt(mean(x^2) + eps) * weight   (size values; out may alias x)
void rmsnorm(float* out, const float* x, const float* weight, int size, float eps);

/// rmsnorm of `rows` rows at `stride` floats apart (out may alias x): the same bits as rmsnorm
/// row by row, several rows' sums of squares computed side by side.
void rmsnorm_rows(float* out, const float* x, std::int64_t stride, int rows, const float* weight,
                  int size, float eps);

/// Softmax in place over size values (max-subtracted, as run.c). The SIMD levels compute e^x 8
/// lanes at a time (exp_rows), within 2 ulp of expf, and sum in 8 partial sums.
void softmax(float* x, int size);

/// Index of the largest of x[0..size) (size >= 1), the lowest on ties: the same index as run.c's
/// argmax loop (`if (x[i] > x[best]) best = i`), NaNs included (none is larger than anything, so
/// one never wins unless it is x[0]: then nothing is larger and 0 is the answer). The SIMD levels
/// find the largest value 8 lanes at a time, then its first index: that loop is one
/// load-compare-select chain per value, ~2 ms of a 32-sequence decode step over a 32,000-token
/// vocabulary.
int argmax(const float* x, int size);

/// out[i] = f32_to_f16(x[i]) (dtype.hpp: round to nearest even, overflow to inf, a NaN to the
/// quiet NaN of its sign), bit for bit; the SIMD levels convert 8 values per F16C instruction.
/// Writes a row of 16-bit KV (the scalar loop was ~10% of a 32-sequence decode step).
void f32_to_f16_row(const float* x, std::uint16_t* out, int n);

/// x[i] += y[i] for i < n (the residual connections), 8 values per step on the SIMD levels:
/// one rounded addition each, so the same bits. (g++ -O2 left the loop scalar: x may alias y.)
void add_to(float* x, const float* y, int n);

/// SwiGLU's gate: h1[i] = silu(h1[i]) * h3[i], silu(v) = v / (1 + e^-v) as run.c computes it
/// (v * (1 / (1 + e^-v))), e^x as exp_rows.
void silu_mul(float* h1, const float* h3, int size);

/// x[i] = e^x[i]: std::exp on the scalar level, else 8 lanes at a time by a polynomial within
/// 2 ulp of it over [-87.3, 88.4] (below, ~1e-38 instead of a denormal or 0). Exposed so the
/// tests can hold it to that bound.
void exp_rows(float* x, int size);

/// Dequantizes row `r` of `w` into out[cols].
void dequantize_row(const tensor_view& w, std::int64_t r, float* out);

/// Rotates adjacent pairs (2i, 2i+1) of vec[size] (size a multiple of head_size) by angle
/// pos * theta^(-(2i mod head_size)/head_size), with cos/sin taken from a table built by
/// rope_table(): table[pos][head_size/2][2] = {cos, sin}.
void rope(float* vec, int size, int head_size, const float* table_at_pos);

/// One query head's attention over positions [0, n_pos) of `layer` in a paged cache:
/// att[t] = softmax(q . K[t][kv_head] / sqrt(head_size)), out = sum_t att[t] V[t][kv_head].
/// q and out are [head_size]; att is scratch of >= n_pos floats. K/V in the cache's dtype.
void attention(const float* q, const kv_cache& kv, std::span<const std::int32_t> table, int layer,
               int kv_head, int n_pos, float* att, float* out);

/// attention() of `rows` query rows of ONE sequence at consecutive positions (a prefill chunk):
/// row r is q + r * q_stride and attends to positions [0, n_pos0 + r), into out + r * out_stride,
/// with scores in att + r * att_stride (>= n_pos0 + rows - 1 floats each). The same bits as
/// attention() row by row; each K row is loaded once for several query rows (with AVX-512 and
/// 8 rows or more, K is turned into columns first, once per call: pass a chunk's rows together).
void attention_rows(const float* q, std::int64_t q_stride, const kv_cache& kv,
                    std::span<const std::int32_t> table, int layer, int kv_head, int n_pos0,
                    int rows, float* att, std::int64_t att_stride, float* out,
                    std::int64_t out_stride);

/// Fills table[seq_len][head_size/2][2] with run.c's cos/sin values (same float formula).
void rope_table(float* table, int seq_len, int head_size, float theta);

} // namespace duet::engine::kernels
