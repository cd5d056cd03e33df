// Every optimized kernel against a plain scalar reference, within a stated tolerance.
// Matmul tolerance: |got - ref| <= 1e-5 * sum_k |w_k x_k| + 1e-6, i.e. float rounding of a
// reordered sum (the AVX2 path sums 8 lanes then adds them), computed in double for the ref;
// for q8_0 plus the bound of 8-bit activation rounding (activation_rounding_bound).
#include "engine/error.hpp"
#include "engine/kernels.hpp"
#include "engine/kv_cache.hpp"
#include "engine/q8_pack.hpp"
#include "tests/support/seed.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <vector>

using namespace duet::engine;

namespace {

using duet::test::test_seed;

/// Every level a test runs at (one this CPU lacks runs the next one below it).
constexpr std::array<kernels::simd, 4> every_simd_level{kernels::simd::scalar, kernels::simd::avx2,
                                                        kernels::simd::avx_vnni,
                                                        kernels::simd::avx512_vnni};

/// Weights stored as `type`, plus their exact f32 values.
struct weights {
  std::vector<std::uint8_t> bytes;
  std::vector<float> values; // [rows][cols], dequantized
  tensor_view view;
  std::vector<std::uint8_t> packed; // q8_0 rows repacked for the kernels (engine/q8_pack.hpp)
};

/// Gives q8_0 weights their packed copy, as the GGUF loader does (no-op for other types).
void pack(weights& w) {
  w.packed.resize(q8_packed_bytes(w.view));
  if (w.packed.empty()) return;
  pack_q8_0(w.view, w.packed.data());
  w.view.q8_packed = w.packed.data();
}

weights make_weights(dtype type, int rows, int cols, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  weights w;
  w.values.resize(static_cast<std::size_t>(rows * cols));
  w.bytes.resize(static_cast<std::size_t>(rows) * row_bytes(type, static_cast<std::size_t>(cols)));
  for (int r = 0; r < rows; ++r) {
    auto* row = w.bytes.data() +
                static_cast<std::size_t>(r) * row_bytes(type, static_cast<std::size_t>(cols));
    float* vals = w.values.data() + static_cast<std::size_t>(r * cols);
    if (type == dtype::q8_0) {
      auto* blocks = reinterpret_cast<q8_0_block*>(row);
      for (int b = 0; b < cols / 32; ++b) {
        float d = std::abs(dist(rng)) * 0.01f + 1e-3f;
        blocks[b].d = f32_to_f16(d);
        float dd = f16_to_f32(blocks[b].d);
        for (int i = 0; i < 32; ++i) {
          auto q = static_cast<std::int8_t>(
              std::uniform_int_distribution<int>(-128, 127)(rng)); // -128 too
          blocks[b].qs[i] = q;
          vals[b * 32 + i] = dd * static_cast<float>(q);
        }
      }
    } else {
      for (int k = 0; k < cols; ++k) {
        float v = dist(rng);
        if (type == dtype::f16) {
          auto h = f32_to_f16(v);
          std::memcpy(row + k * 2, &h, 2);
          v = f16_to_f32(h);
        } else {
          std::memcpy(row + k * 4, &v, 4);
        }
        vals[k] = v;
      }
    }
  }
  w.view = tensor_view{w.bytes.data(), type, rows, cols};
  return w;
}

/// q8_0 weights multiply activations quantized to 8 bits per 32-value block (scale
/// d = max|x| / 127, round to nearest), as ggml does: each activation moves by at most d / 2,
/// so row r's result moves by at most sum_blocks d / 2 * sum |w| (with 0.1% for the float
/// arithmetic of d and of x / d).
double activation_rounding_bound(const weights& w, int r, int cols, const float* x) {
  double bound = 0;
  for (int b = 0; b < cols / 32; ++b) {
    double amax = 0, wsum = 0;
    for (int i = 0; i < 32; ++i) {
      amax = std::max(amax, static_cast<double>(std::abs(x[b * 32 + i])));
      wsum += std::abs(w.values[static_cast<std::size_t>(r * cols + b * 32 + i)]);
    }
    bound += amax / 127.0 / 2.0 * 1.001 * wsum;
  }
  return bound;
}

} // namespace

TEST_CASE("matmul of f32, f16 and q8_0 weights matches a scalar reference") {
  std::mt19937 rng(test_seed());
  INFO("seed " << test_seed() << " (set DUET_TEST_SEED to replay)");
  auto type = GENERATE(dtype::f32, dtype::f16, dtype::q8_0);
  // A level this CPU lacks runs the next one below it (simd_level() in the message says which).
  auto level = GENERATE(from_range(every_simd_level));
  kernels::set_simd_limit(level);
  // q8_0 in the file layout and packed 8 rows at a time (what the GGUF loader gives the kernels).
  const bool packed = GENERATE(false, true);
  if (packed && type != dtype::q8_0) return;
  struct shape {
    int rows, cols, n;
  };
  for (auto s : {shape{1, 32, 1}, shape{7, 64, 1}, shape{13, 96, 3}, shape{64, 172, 5},
                 shape{33, 256, 2}, shape{9, 40, 4},
                 // 4-row single-token groups, 3-token tiles with 2- and 1-token tails, many
                 // tokens per dequantized row group, a column tail in the multi-token path
                 shape{16, 96, 1}, shape{12, 100, 1}, shape{21, 128, 7}, shape{8, 64, 8},
                 shape{12, 192, 32}, shape{10, 44, 6},
                 // packed: 5 groups (two 512-bit pairs and one alone), 9 tokens (8, then 1)
                 shape{44, 64, 9}}) {
    if (type == dtype::q8_0 && s.cols % 32 != 0) continue;
    auto w = make_weights(type, s.rows, s.cols, rng);
    if (packed) pack(w);
    const int x_stride = s.cols + 3, y_stride = s.rows + 2;
    std::vector<float> x(static_cast<std::size_t>(s.n * x_stride));
    for (auto& v : x) v = std::normal_distribution<float>(0.0f, 1.0f)(rng);
    std::vector<float> y(static_cast<std::size_t>(s.n * y_stride), -7.0f);
    // Two row ranges, as two threads would split them.
    int mid = s.rows / 2;
    kernels::matmul(w.view, x.data(), x_stride, s.n, y.data(), y_stride, 0, mid);
    kernels::matmul(w.view, x.data(), x_stride, s.n, y.data(), y_stride, mid, s.rows);
    for (int t = 0; t < s.n; ++t) {
      for (int r = 0; r < s.rows; ++r) {
        double ref = 0, mag = 0, quant = 0;
        for (int k = 0; k < s.cols; ++k) {
          double p = static_cast<double>(w.values[static_cast<std::size_t>(r * s.cols + k)]) *
                     x[static_cast<std::size_t>(t * x_stride + k)];
          ref += p;
          mag += std::abs(p);
        }
        if (type == dtype::q8_0) quant = activation_rounding_bound(w, r, s.cols, &x[t * x_stride]);
        INFO(dtype_name(type) << (packed ? " packed " : " ") << kernels::simd_level() << " rows "
                              << s.rows << " cols " << s.cols << " n " << s.n << " at t " << t
                              << " r " << r);
        REQUIRE(std::abs(y[static_cast<std::size_t>(t * y_stride + r)] - ref) <=
                1e-5 * mag + quant + 1e-6);
      }
      CHECK(y[static_cast<std::size_t>(t * y_stride + s.rows)] ==
            -7.0f); // stride padding untouched
    }
  }
  kernels::set_simd_limit(kernels::best_simd());
}

TEST_CASE("matmul gives a token bit-identical results alone and in a batch, for every dtype") {
  // A decode lane multiplies a sequence's token alone or batched with others, depending on who
  // else is decoding: greedy tokens may only stay the same if the result does not depend on
  // that. Exact equality, not a tolerance.
  std::mt19937 rng(test_seed());
  INFO("seed " << test_seed() << " (set DUET_TEST_SEED to replay)");
  auto type = GENERATE(dtype::f32, dtype::f16, dtype::q8_0);
  auto level = GENERATE(from_range(every_simd_level));
  kernels::set_simd_limit(level);
  const bool packed = GENERATE(false, true);
  if (packed && type != dtype::q8_0) return;
  INFO(dtype_name(type) << (packed ? " packed " : " ") << kernels::simd_level());
  // 21 rows: two packed groups of 8 and 5 rows in the file layout; 13 tokens: a pass of 8 (or
  // 4) tokens, then single ones.
  const int rows = 21, cols = 256, n = 13;
  auto w = make_weights(type, rows, cols, rng);
  if (packed) pack(w);
  std::vector<float> x(static_cast<std::size_t>(n * cols));
  for (auto& v : x) v = std::normal_distribution<float>(0.0f, 1.0f)(rng);
  std::vector<float> batched(static_cast<std::size_t>(n * rows));
  kernels::matmul(w.view, x.data(), cols, n, batched.data(), rows, 0, rows);
  // Thread chunks may split a packed group: each row's result is still its own.
  std::vector<float> split(batched.size());
  kernels::matmul(w.view, x.data(), cols, n, split.data(), rows, 0, 4);
  kernels::matmul(w.view, x.data(), cols, n, split.data(), rows, 4, 11);
  kernels::matmul(w.view, x.data(), cols, n, split.data(), rows, 11, rows);
  REQUIRE(split == batched);
  // A prepared input (the forward pass's: quantized once, rows split as threads would) and one
  // prepared without quantization (the matmul then quantizes it) give the same bits.
  for (bool quantize : {true, false}) {
    INFO("matmul_input " << (quantize ? "quantized in 3 row ranges" : "not quantized"));
    kernels::matmul_input in;
    in.reset(x.data(), cols, n, cols, quantize);
    in.quantize_rows(0, 5);
    in.quantize_rows(5, 6);
    in.quantize_rows(6, n);
    std::vector<float> prepared(batched.size());
    kernels::matmul(w.view, in, prepared.data(), rows, 0, 11);
    kernels::matmul(w.view, in, prepared.data(), rows, 11, rows);
    REQUIRE(prepared == batched);
  }
  // An input of another width is refused, not read past its rows.
  kernels::matmul_input narrow;
  narrow.reset(x.data(), cols, n, cols - 32, true);
  narrow.quantize_rows(0, n);
  std::vector<float> unused(batched.size());
  CHECK_THROWS_AS(kernels::matmul(w.view, narrow, unused.data(), rows, 0, rows),
                  duet::engine::engine_error);
  for (int t = 0; t < n; ++t) {
    std::vector<float> alone(static_cast<std::size_t>(rows));
    kernels::matmul(w.view, x.data() + t * cols, cols, 1, alone.data(), rows, 0, rows);
    for (int r = 0; r < rows; ++r) {
      INFO("token " << t << " row " << r);
      REQUIRE(alone[static_cast<std::size_t>(r)] ==
              batched[static_cast<std::size_t>(t * rows + r)]);
    }
  }
  kernels::set_simd_limit(kernels::best_simd());
}

TEST_CASE("q8_0 matmul gives bit-identical results with and without VNNI") {
  // A disaggregated request may prefill on a host with VNNI and decode on one without: the
  // integer dot products are exact on every path, so the results must be equal, not close.
  std::vector<kernels::simd> vnni;
  for (auto l : {kernels::simd::avx_vnni, kernels::simd::avx512_vnni}) {
    kernels::set_simd_limit(l);
    if (kernels::current_simd() == l) vnni.push_back(l);
  }
  kernels::set_simd_limit(kernels::simd::avx2);
  if (kernels::current_simd() != kernels::simd::avx2 || vnni.empty()) {
    kernels::set_simd_limit(kernels::best_simd());
    WARN("skipped: this CPU has " << kernels::simd_level() << ", not AVX2 and a VNNI level");
    return;
  }
  std::mt19937 rng(test_seed());
  INFO("seed " << test_seed() << " (set DUET_TEST_SEED to replay)");
  // 45 rows: 5 packed groups (the 512-bit kernel takes two at a time: two pairs, then one
  // alone), then 5 rows in the file layout. 11 blocks a row: the 512-bit kernel takes blocks
  // two at a time, then the last one alone.
  const int rows = 45, cols = 352;
  auto file_layout = make_weights(dtype::q8_0, rows, cols, rng), packed = file_layout;
  packed.view.data = packed.bytes.data();
  pack(packed);
  for (auto* w : {&file_layout, &packed})
    for (int n : {1, 2, 5, 9}) {
      std::vector<float> x(static_cast<std::size_t>(n * cols));
      for (auto& v : x) v = std::normal_distribution<float>(0.0f, 1.0f)(rng);
      kernels::set_simd_limit(kernels::simd::avx2);
      std::vector<float> ref(static_cast<std::size_t>(n * rows));
      kernels::matmul(w->view, x.data(), cols, n, ref.data(), rows, 0, rows);
      for (auto l : vnni) {
        kernels::set_simd_limit(l);
        std::vector<float> got(ref.size());
        kernels::matmul(w->view, x.data(), cols, n, got.data(), rows, 0, rows);
        for (std::size_t i = 0; i < got.size(); ++i) {
          INFO(kernels::simd_level()
               << (w == &packed ? " packed" : "") << " n " << n << " at " << i);
          REQUIRE(got[i] == ref[i]);
        }
        // Rows [begin, 45) as a thread's chunk would be: starting inside a group (4), the pass
        // over that group stores only its rows; starting at group 1 (12), the 512-bit kernel
        // pairs groups 1-2 and 3-4 instead of 0-1 and 2-3.
        for (int begin : {4, 12}) {
          std::vector<float> split(ref.size(), -7.0f);
          kernels::matmul(w->view, x.data(), cols, n, split.data(), rows, begin, rows);
          for (int t = 0; t < n; ++t)
            for (int r = 0; r < rows; ++r) {
              INFO(kernels::simd_level()
                   << (w == &packed ? " packed" : "") << " n " << n << " rows [" << begin << ", "
                   << rows << ") token " << t << " row " << r);
              const auto i = static_cast<std::size_t>(t * rows + r);
              REQUIRE(split[i] == (r < begin ? -7.0f : ref[i]));
            }
        }
      }
    }
  kernels::set_simd_limit(kernels::best_simd());
}

TEST_CASE("exp_rows is within 2 ulp of std::exp on every level") {
  auto level = GENERATE(kernels::simd::scalar, kernels::simd::avx2);
  kernels::set_simd_limit(level);
  INFO(kernels::simd_level());
  // Every 1/1024 over the range softmax and SiLU use, and its ends.
  std::vector<float> x;
  for (int i = -87 * 1024; i <= 88 * 1024; ++i) x.push_back(static_cast<float>(i) / 1024.0f);
  x.push_back(-87.33f);
  x.push_back(88.37f);
  std::vector<float> e = x;
  kernels::exp_rows(e.data(), static_cast<int>(e.size()));
  double worst = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const float ref = std::exp(x[i]);
    const double ulp = std::nextafter(ref, INFINITY) - ref;
    worst = std::max(worst, std::abs(static_cast<double>(e[i]) - ref) / ulp);
  }
  INFO("worst error " << worst << " ulp");
  CHECK(worst <= 2.0);
  kernels::set_simd_limit(kernels::best_simd());
}

TEST_CASE("add_to adds bit for bit at every SIMD level, the tail included") {
  std::mt19937 rng(test_seed());
  INFO("seed " << test_seed());
  std::normal_distribution<float> dist(0.0f, 3.0f);
  for (auto level : every_simd_level) {
    kernels::set_simd_limit(level);
    INFO(kernels::simd_level());
    for (int n : {0, 1, 7, 8, 9, 67, 768}) {
      std::vector<float> x(static_cast<std::size_t>(n) + 1), y(x.size());
      for (auto& v : x) v = dist(rng);
      for (auto& v : y) v = dist(rng);
      const std::vector<float> before = x;
      kernels::add_to(x.data(), y.data(), n);
      for (std::size_t i = 0; i < x.size(); ++i) {
        INFO(n << " values, value " << i);
        // One value past n is left alone.
        REQUIRE(x[i] == (i < static_cast<std::size_t>(n) ? before[i] + y[i] : before[i]));
      }
    }
  }
  kernels::set_simd_limit(kernels::best_simd());
}

TEST_CASE("f32_to_f16_row is f32_to_f16 bit for bit at every SIMD level") {
  // Bit patterns across every exponent (normals, subnormals of both formats, overflow, rounding
  // ties, infinities, NaNs with payloads), then odd lengths for the tails.
  std::vector<float> x;
  for (std::uint64_t u = 0; u <= 0xffffffffull; u += 65521)
    x.push_back(std::bit_cast<float>(static_cast<std::uint32_t>(u)));
  for (std::uint32_t u :
       {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0xffc00001u, 0x7f800001u,
        0x477ff000u, 0x477fefffu, 0x38800000u, 0x387fffffu, 0x33000000u, 0x33000001u, 0x32ffffffu,
        0x3f801000u, 0x3f803000u})
    x.push_back(std::bit_cast<float>(u));
  std::vector<std::uint16_t> want(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) want[i] = f32_to_f16(x[i]);
  for (auto level : every_simd_level) {
    kernels::set_simd_limit(level);
    INFO(kernels::simd_level());
    std::vector<std::uint16_t> got(x.size());
    kernels::f32_to_f16_row(x.data(), got.data(), static_cast<int>(x.size()));
    std::size_t differ = 0;
    for (std::size_t i = 0; i < x.size(); ++i)
      if (got[i] != want[i]) {
        if (differ++ == 0)
          FAIL_CHECK("value 0x" << std::hex << std::bit_cast<std::uint32_t>(x[i]) << ": 0x"
                                << got[i] << ", f32_to_f16 0x" << want[i]);
      }
    CHECK(differ == 0);
    for (int n = 0; n <= 17; ++n) { // the tails: nothing written past n
      std::vector<std::uint16_t> out(18, 0xabcd);
      kernels::f32_to_f16_row(x.data() + 100, out.data(), n);
      for (int i = 0; i < 18; ++i)
        CHECK(out[static_cast<std::size_t>(i)] ==
              (i < n ? want[static_cast<std::size_t>(100 + i)] : 0xabcd));
    }
  }
  kernels::set_simd_limit(kernels::best_simd());
}

TEST_CASE("argmax returns run.c's index at every SIMD level: ties, NaN, signed zeros, infinities") {
  // run.c's loop, the reference.
  auto reference = [](const std::vector<float>& x) {
    int best = 0;
    for (int i = 1; i < static_cast<int>(x.size()); ++i)
      if (x[static_cast<std::size_t>(i)] > x[static_cast<std::size_t>(best)]) best = i;
    return best;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN(),
              inf = std::numeric_limits<float>::infinity();
  std::mt19937 rng(test_seed());
  INFO("seed " << test_seed());
  // Values from a small set, so that ties (and ties between +0 and -0) are common.
  const std::vector<float> palette = {-3.0f, -1.0f, -0.0f, 0.0f, 0.5f, 2.0f, 7.0f, -inf, inf, nan};
  std::vector<std::vector<float>> cases = {
      {nan, 1.0f, 2.0f},                                   // NaN first: nothing is larger, 0
      {1.0f, nan, 2.0f, nan},                              // a later NaN never wins
      {-0.0f, 0.0f, -0.0f},                                // +0 is not larger than -0
      {-inf, -inf, -inf},                                  // all equal: the first
      {-inf, nan, nan, nan, nan, nan, nan, nan, nan, nan}, // only NaNs after x[0]
  };
  // Per size: even trials from the palette (the first five with infinities and NaN, the last
  // five without), odd ones from a normal distribution.
  for (int size : {1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100, 512, 32000}) {
    for (int trial = 0; trial < 20; ++trial) {
      std::vector<float> x(static_cast<std::size_t>(size));
      std::uniform_int_distribution<std::size_t> pick(0, trial < 10 ? palette.size() - 1
                                                                    : palette.size() - 4);
      std::normal_distribution<float> dist(0.0f, 3.0f);
      for (auto& v : x) v = trial % 2 == 0 ? palette[pick(rng)] : dist(rng);
      cases.push_back(std::move(x));
    }
  }
  for (auto level : every_simd_level) {
    kernels::set_simd_limit(level);
    for (const auto& x : cases) {
      INFO(kernels::simd_level() << ", " << x.size() << " values");
      std::ostringstream shown; // the values themselves where they are few
      for (std::size_t i = 0; i < x.size() && x.size() <= 16; ++i) shown << x[i] << ' ';
      INFO(shown.str());
      CHECK(kernels::argmax(x.data(), static_cast<int>(x.size())) == reference(x));
    }
  }
  kernels::set_simd_limit(kernels::best_simd());
}

TEST_CASE("rmsnorm, softmax and rope match their formulas") {
  std::mt19937 rng(test_seed());
  INFO("seed " << test_seed());
  std::normal_distribution<float> dist(0.0f, 2.0f);
  const int n = 67;
  std::vector<float> x(n), w(n), out(n);
  for (int i = 0; i < n; ++i)
    x[static_cast<std::size_t>(i)] = dist(rng), w[static_cast<std::size_t>(i)] = dist(rng);
  kernels::rmsnorm(out.data(), x.data(), w.data(), n, 1e-5f);
  double ss = 0;
  for (float v : x) ss += static_cast<double>(v) * v;
  double inv = 1.0 / std::sqrt(ss / n + 1e-5);
  for (int i = 0; i < n; ++i)
    CHECK(std::abs(out[static_cast<std::size_t>(i)] -
                   w[static_cast<std::size_t>(i)] * x[static_cast<std::size_t>(i)] * inv) <=
          1e-5 * (1 + std::abs(out[static_cast<std::size_t>(i)])));

  std::vector<float> s = x;
  kernels::softmax(s.data(), n);
  double mx = *std::max_element(x.begin(), x.end()), sum = 0;
  for (float v : x) sum += std::exp(v - mx);
  double total = 0;
  for (int i = 0; i < n; ++i) {
    CHECK(std::abs(s[static_cast<std::size_t>(i)] -
                   std::exp(x[static_cast<std::size_t>(i)] - mx) / sum) <= 1e-6);
    total += s[static_cast<std::size_t>(i)];
  }
  CHECK(std::abs(total - 1.0) <= 1e-5);

  // RoPE through the table equals run.c's per-call powf/cosf/sinf bit for bit, at every SIMD
  // level, for head sizes with and without a scalar tail (4 pairs per SIMD step).
  for (auto level : every_simd_level)
    for (int head_size : {6, 8, 12, 64}) {
      kernels::set_simd_limit(level);
      INFO(kernels::simd_level() << ", head size " << head_size);
      const int dim = 4 * head_size, seq_len = 40;
      std::vector<float> table(static_cast<std::size_t>(seq_len * head_size));
      kernels::rope_table(table.data(), seq_len, head_size, 10000.0f);
      for (int pos : {0, 1, 17, 39}) {
        std::vector<float> v(dim), ref(dim);
        for (auto& e : v) e = dist(rng);
        ref = v;
        kernels::rope(v.data(), dim, head_size, table.data() + pos * head_size);
        for (int i = 0; i < dim; i += 2) {
          float freq = 1.0f / powf(10000.0f, static_cast<float>(i % head_size) /
                                                 static_cast<float>(head_size));
          float val = static_cast<float>(pos) * freq;
          float fcr = cosf(val), fci = sinf(val);
          float v0 = ref[static_cast<std::size_t>(i)], v1 = ref[static_cast<std::size_t>(i + 1)];
          CHECK(v[static_cast<std::size_t>(i)] == v0 * fcr - v1 * fci);
          CHECK(v[static_cast<std::size_t>(i + 1)] == v0 * fci + v1 * fcr);
        }
      }
    }
  kernels::set_simd_limit(kernels::best_simd());
}

TEST_CASE("rmsnorm_rows gives the same bits as rmsnorm row by row") {
  std::mt19937 rng(test_seed());
  INFO("seed " << test_seed());
  std::normal_distribution<float> dist(0.0f, 2.0f);
  // 7 rows: a group of 4 and 3 left over; a stride past the row so rows are not contiguous
  const int n = 67, rows = 7, stride = n + 5;
  std::vector<float> x(static_cast<std::size_t>(rows * stride)), w(n);
  for (auto& e : x) e = dist(rng);
  for (auto& e : w) e = dist(rng);
  std::vector<float> out(x.size(), 0.0f), one(n);
  kernels::rmsnorm_rows(out.data(), x.data(), stride, rows, w.data(), n, 1e-5f);
  for (int r = 0; r < rows; ++r) {
    kernels::rmsnorm(one.data(), x.data() + r * stride, w.data(), n, 1e-5f);
    for (int i = 0; i < n; ++i) {
      INFO("row " << r << " value " << i);
      REQUIRE(out[static_cast<std::size_t>(r * stride + i)] == one[static_cast<std::size_t>(i)]);
    }
  }
  // At every SIMD level, run.c's rmsnorm bit for bit: the sum of squares in order, then
  // weight * (scale * x), each product rounded (this file is compiled without FMA).
  for (auto level : every_simd_level) {
    kernels::set_simd_limit(level);
    INFO(kernels::simd_level());
    for (int r = 0; r < rows; ++r) {
      const float* xr = x.data() + r * stride;
      float ss = 0.0f;
      for (int i = 0; i < n; ++i) ss += xr[i] * xr[i];
      ss /= static_cast<float>(n);
      ss += 1e-5f;
      ss = 1.0f / std::sqrt(ss);
      kernels::rmsnorm(one.data(), xr, w.data(), n, 1e-5f);
      for (int i = 0; i < n; ++i) {
        INFO("row " << r << " value " << i);
        REQUIRE(one[static_cast<std::size_t>(i)] == w[static_cast<std::size_t>(i)] * (ss * xr[i]));
      }
    }
  }
  kernels::set_simd_limit(kernels::best_simd());
  // In place, as the forward pass calls it.
  kernels::rmsnorm_rows(x.data(), x.data(), stride, rows, w.data(), n, 1e-5f);
  for (int r = 0; r < rows; ++r)
    for (int i = 0; i < n; ++i)
      REQUIRE(x[static_cast<std::size_t>(r * stride + i)] ==
              out[static_cast<std::size_t>(r * stride + i)]);
}

TEST_CASE("attention over the paged cache matches a scalar reference for f32 and f16 KV") {
  std::mt19937 rng(test_seed());
  INFO("seed " << test_seed());
  std::normal_distribution<float> dist(0.0f, 1.0f);
  auto type = GENERATE(dtype::f32, dtype::f16);
  // 8: one register; 64: the AVX2 path's 8-register output chunk; 136: two chunks and a tail;
  // 144: the 512-bit weighted sum's two chunks and a one-register tail
  const int hs = GENERATE(8, 64, 136, 144);
  // avx512vnni: the weighted sum of V in 512-bit registers where the head size allows (on a
  // CPU without AVX-512 this runs the AVX2 path again)
  auto level = GENERATE(kernels::simd::scalar, kernels::simd::avx2, kernels::simd::avx512_vnni);
  kernels::set_simd_limit(level);
  INFO(dtype_name(type) << " head_size " << hs << " " << kernels::simd_level());
  kv_cache_config c;
  c.first_layer = 1;
  c.last_layer = 3;
  c.n_kv_heads = 2;
  c.head_size = hs;
  c.seq_len_max = 50;
  // 4: blocks of whole 4-position score steps; 5: a single position at the end of every block
  c.block_tokens = GENERATE(4, 5);
  c.blocks_max = 30;
  INFO("block_tokens " << c.block_tokens);
  c.type = type;
  kv_cache kv(c);
  REQUIRE(kv.seq_add(1));
  REQUIRE(kv.seq_add(2)); // interleaves blocks with sequence 1
  const int n_pos = 37, kvd = c.kv_dim(), layer = 2;
  REQUIRE(kv.seq_reserve(2, 8));
  REQUIRE(kv.seq_reserve(1, n_pos));
  std::vector<float> k(static_cast<std::size_t>(n_pos * kvd)), v(k.size());
  auto table = kv.block_table(1);
  for (int p = 0; p < n_pos; ++p)
    for (int j = 0; j < kvd; ++j) {
      float kv_k = dist(rng), kv_v = dist(rng);
      if (type == dtype::f16) {
        auto hk = f32_to_f16(kv_k), hv = f32_to_f16(kv_v);
        std::memcpy(kv.k_row(table, layer, p) + j * 2, &hk, 2);
        std::memcpy(kv.v_row(table, layer, p) + j * 2, &hv, 2);
        kv_k = f16_to_f32(hk), kv_v = f16_to_f32(hv);
      } else {
        std::memcpy(kv.k_row(table, layer, p) + j * 4, &kv_k, 4);
        std::memcpy(kv.v_row(table, layer, p) + j * 4, &kv_v, 4);
      }
      k[static_cast<std::size_t>(p * kvd + j)] = kv_k;
      v[static_cast<std::size_t>(p * kvd + j)] = kv_v;
    }
  std::vector<float> q(static_cast<std::size_t>(hs)), att(n_pos), out(q.size());
  for (auto& e : q) e = dist(rng);
  for (int head = 0; head < 2; ++head) {
    kernels::attention(q.data(), kv, table, layer, head, n_pos, att.data(), out.data());
    std::vector<double> sc(n_pos);
    double mx = -1e300, sum = 0;
    for (int p = 0; p < n_pos; ++p) {
      double d = 0;
      for (int i = 0; i < hs; ++i)
        d += static_cast<double>(q[static_cast<std::size_t>(i)]) *
             k[static_cast<std::size_t>(p * kvd + head * hs + i)];
      sc[static_cast<std::size_t>(p)] = d / std::sqrt(static_cast<double>(hs));
      mx = std::max(mx, sc[static_cast<std::size_t>(p)]);
    }
    for (auto& e : sc) sum += (e = std::exp(e - mx));
    for (int i = 0; i < hs; ++i) {
      double ref = 0;
      for (int p = 0; p < n_pos; ++p)
        ref += sc[static_cast<std::size_t>(p)] / sum *
               v[static_cast<std::size_t>(p * kvd + head * hs + i)];
      CHECK(std::abs(out[static_cast<std::size_t>(i)] - ref) <= 1e-5);
    }
    if (level == kernels::simd::avx512_vnni) { // the same bits as in 256-bit registers
      std::vector<float> narrow(out.size());
      kernels::set_simd_limit(kernels::simd::avx2);
      kernels::attention(q.data(), kv, table, layer, head, n_pos, att.data(), narrow.data());
      kernels::set_simd_limit(level);
      for (int i = 0; i < hs; ++i) {
        INFO("head " << head << " value " << i);
        REQUIRE(out[static_cast<std::size_t>(i)] == narrow[static_cast<std::size_t>(i)]);
      }
    }
  }
  // attention_rows (prefill's kernel), the same bits as attention() row by row: 7 query rows at
  // consecutive positions (a group of 4 and a group of 3) and 21 (on AVX-512, for head sizes of
  // a multiple of 16, with K as columns in blocks of 16 positions: 37 positions are 2 blocks and
  // a part, and the groups of 4 rows start and end inside blocks).
  for (const int rows : {7, 21}) {
    const int n_pos0 = n_pos - rows + 1;
    std::vector<float> qs(static_cast<std::size_t>(rows * (hs + 3)));
    for (auto& e : qs) e = dist(rng);
    std::vector<float> atts(static_cast<std::size_t>(rows * n_pos)), outs(qs.size()), one(q.size());
    for (int head = 0; head < 2; ++head) {
      kernels::attention_rows(qs.data(), hs + 3, kv, table, layer, head, n_pos0, rows, atts.data(),
                              n_pos, outs.data(), hs + 3);
      for (int r = 0; r < rows; ++r) {
        kernels::attention(qs.data() + r * (hs + 3), kv, table, layer, head, n_pos0 + r, att.data(),
                           one.data());
        for (int i = 0; i < hs; ++i) {
          INFO(rows << " rows, head " << head << " row " << r << " value " << i);
          REQUIRE(outs[static_cast<std::size_t>(r * (hs + 3) + i)] ==
                  one[static_cast<std::size_t>(i)]);
        }
      }
    }
  }
  kernels::set_simd_limit(kernels::best_simd());
}

TEST_CASE("attention_rows gives attention()'s bits past one window of K as columns") {
  // 1100 positions: the 512-bit path turns K into columns 1024 positions at a time, so a chunk
  // of rows attending to all of them crosses a window; rows start inside a 16-position block.
  std::mt19937 rng(test_seed());
  INFO("seed " << test_seed());
  std::normal_distribution<float> dist(0.0f, 1.0f);
  const auto type = GENERATE(dtype::f32, dtype::f16);
  INFO(dtype_name(type) << " " << kernels::simd_level());
  kv_cache_config c;
  c.first_layer = 0;
  c.last_layer = 1;
  c.n_kv_heads = 1;
  c.head_size = 16;
  c.seq_len_max = 1100;
  c.block_tokens = 16;
  c.blocks_max = 69;
  c.type = type;
  kv_cache kv(c);
  REQUIRE(kv.seq_add(1));
  const int n_pos = 1100, hs = c.head_size, rows = 9, n_pos0 = n_pos - rows + 1;
  REQUIRE(kv.seq_reserve(1, n_pos));
  auto table = kv.block_table(1);
  for (int p = 0; p < n_pos; ++p)
    for (int j = 0; j < hs; ++j) {
      const float k = dist(rng), v = dist(rng);
      if (type == dtype::f16) {
        const auto hk = f32_to_f16(k), hv = f32_to_f16(v);
        std::memcpy(kv.k_row(table, 0, p) + j * 2, &hk, 2);
        std::memcpy(kv.v_row(table, 0, p) + j * 2, &hv, 2);
      } else {
        std::memcpy(kv.k_row(table, 0, p) + j * 4, &k, 4);
        std::memcpy(kv.v_row(table, 0, p) + j * 4, &v, 4);
      }
    }
  std::vector<float> qs(static_cast<std::size_t>(rows * hs));
  for (auto& e : qs) e = dist(rng);
  std::vector<float> atts(static_cast<std::size_t>(rows * n_pos)), outs(qs.size());
  std::vector<float> att(n_pos), one(static_cast<std::size_t>(hs));
  kernels::attention_rows(qs.data(), hs, kv, table, 0, 0, n_pos0, rows, atts.data(), n_pos,
                          outs.data(), hs);
  for (int r = 0; r < rows; ++r) {
    kernels::attention(qs.data() + r * hs, kv, table, 0, 0, n_pos0 + r, att.data(), one.data());
    for (int i = 0; i < hs; ++i) {
      INFO("row " << r << " value " << i);
      REQUIRE(outs[static_cast<std::size_t>(r * hs + i)] == one[static_cast<std::size_t>(i)]);
    }
  }
}
