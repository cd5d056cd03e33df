#include "bench/compute_baseline.hpp"

#include <algorithm>
#include <chrono>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define DUET_X86 1
#endif

namespace duet::bench {

namespace {

using clock_type = std::chrono::steady_clock;

constexpr long iterations = 2'000'000;
constexpr int chains = 10; ///< > FMA latency x pipes (4 x 2), so the pipes never wait

/// FLOP done by one call of a loop below.
constexpr double flop_per_call_avx2 = 2.0 * 8 * chains * iterations;
constexpr double flop_per_call_scalar = 2.0 * chains * iterations;

#ifdef DUET_X86
__attribute__((target("avx2,fma"))) float fma_loop_avx2() {
  __m256 acc[chains];
  for (int i = 0; i < chains; ++i) acc[i] = _mm256_set1_ps(static_cast<float>(i));
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (long k = 0; k < iterations; ++k) {
#pragma GCC unroll 10
    for (int i = 0; i < chains; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  __m256 s = acc[0];
  for (int i = 1; i < chains; ++i) s = _mm256_add_ps(s, acc[i]);
  float out[8];
  _mm256_storeu_ps(out, s);
  return out[0];
}

bool has_avx2_fma() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
bool has_avx2_fma() {
  return false;
}
float fma_loop_avx2() {
  return 0.0f;
}
#endif

float fma_loop_scalar() {
  float acc[chains];
  for (int i = 0; i < chains; ++i) acc[i] = static_cast<float>(i);
  for (long k = 0; k < iterations; ++k)
    for (int i = 0; i < chains; ++i) acc[i] = acc[i] * 0.999999f + 1e-7f;
  float s = 0;
  for (float v : acc) s += v;
  return s;
}

} // namespace

double measure_fma_gflops(int threads, int repeats) {
  threads = std::max(threads, 1);
  const bool simd = has_avx2_fma();
  const double flop_per_call = simd ? flop_per_call_avx2 : flop_per_call_scalar;
  volatile float sink = 0;
  double best = 1e30;
  for (int r = 0; r < repeats + 1; ++r) {
    std::vector<float> results(static_cast<std::size_t>(threads));
    auto start = clock_type::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        results[static_cast<std::size_t>(t)] = simd ? fma_loop_avx2() : fma_loop_scalar();
      });
    for (auto& th : pool) th.join();
    double s = std::chrono::duration<double>(clock_type::now() - start).count();
    if (r > 0) best = std::min(best, s); // the first pass wakes the cores up
    for (float v : results) sink = sink + v;
  }
  return flop_per_call * threads / best / 1e9;
}

} // namespace duet::bench
