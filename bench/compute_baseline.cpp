#include "bench/compute_baseline.hpp"

#include "engine/kernels.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
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
/// Chains of the 512-bit loops, which have 32 registers: vpdpbusd needed more than 10 on the
/// Xeon VM of 2026-11-29 (its int8 peak measured 547-555 GOP/s with 10, 613-617 with 12 and
/// 724-733 with 16, the last what a hand-written loop of 12 independent vpdpbusd per iteration
/// reached: 1.94 per cycle; the f32 FMA peak 157 -> 160-171 GFLOP/s).
constexpr int chains_512 = 16;

/// FLOP done by one call of a loop below.
constexpr double flop_per_call_avx2 = 2.0 * 8 * chains * iterations;
constexpr double flop_per_call_avx512 = 2.0 * 16 * chains_512 * iterations;
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

__attribute__((target("avx2,fma,avx512f"))) float fma_loop_avx512() {
  __m512 acc[chains_512];
  for (int i = 0; i < chains_512; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (long k = 0; k < iterations; ++k) {
#pragma GCC unroll 16
    for (int i = 0; i < chains_512; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  }
  __m512 s = acc[0];
  for (int i = 1; i < chains_512; ++i) s = _mm512_add_ps(s, acc[i]);
  float out[16];
  _mm512_storeu_ps(out, s);
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

#ifdef DUET_X86
/// int8 multiply-adds per call of an int8 loop (32 per 256-bit step and chain).
constexpr double int8_mac_per_call = 32.0 * chains * iterations;

/// VNNI: one vpdpbusd per 32 multiply-adds, accumulating in place (nothing to hoist).
#define DUET_VNNI_LOOP(name, isa, dpbusd)                                                          \
  __attribute__((target(isa))) int name() {                                                        \
    __m256i acc[chains];                                                                           \
    for (int i = 0; i < chains; ++i) acc[i] = _mm256_set1_epi32(i);                                \
    const __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(-5);                               \
    for (long k = 0; k < iterations; ++k) {                                                        \
      _Pragma("GCC unroll 10") for (int i = 0; i < chains; ++i) acc[i] = dpbusd(acc[i], a, b);     \
    }                                                                                              \
    __m256i s = acc[0];                                                                            \
    for (int i = 1; i < chains; ++i) s = _mm256_xor_si256(s, acc[i]);                              \
    return _mm256_extract_epi32(s, 0);                                                             \
  }
DUET_VNNI_LOOP(int8_loop_avx_vnni, "avx2,avxvnni", _mm256_dpbusd_avx_epi32)
#undef DUET_VNNI_LOOP

/// AVX512-VNNI in 512-bit registers, as the packed q8_0 kernel runs it (two 8-row groups per
/// vpdpbusd): 64 multiply-adds per instruction and chains_512 chains. Measured
/// on this VM's EPYC, 1 thread: 848-866 GOP/s, against 420-430 for the same loop in 256-bit
/// registers, which is what this benchmark used to report as the ceiling.
__attribute__((target("avx2,avx512f,avx512bw,avx512vnni"))) int int8_loop_avx512_vnni() {
  __m512i acc[chains_512];
  for (int i = 0; i < chains_512; ++i) acc[i] = _mm512_set1_epi32(i);
  const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-5);
  for (long k = 0; k < iterations; ++k) {
    _Pragma("GCC unroll 16") for (int i = 0; i < chains_512; ++i) acc[i] =
        _mm512_dpbusd_epi32(acc[i], a, b);
  }
  __m512i s = acc[0];
  for (int i = 1; i < chains_512; ++i) s = _mm512_xor_si512(s, acc[i]);
  alignas(64) std::int32_t lanes[16]; // (_mm512_reduce_* trips g++ 12's -Wuninitialized)
  _mm512_store_si512(lanes, s);
  return lanes[0];
}

/// AVX2: maddubs + madd + add per 32 multiply-adds, as the q8_0 kernels do. The maddubs
/// operand is the previous step's result, so the compiler cannot hoist it out of the loop;
/// half the chains (6 x 2 registers of state) keep it within 16 registers.
__attribute__((target("avx2"))) int int8_loop_avx2() {
  constexpr int n = chains / 2 + 1;
  __m256i t[n], acc[n];
  for (int i = 0; i < n; ++i) t[i] = _mm256_set1_epi8(static_cast<char>(i + 1));
  for (int i = 0; i < n; ++i) acc[i] = _mm256_setzero_si256();
  const __m256i b = _mm256_set1_epi8(-5), ones = _mm256_set1_epi16(1);
  for (long k = 0; k < iterations * chains / n; ++k) {
#pragma GCC unroll 6
    for (int i = 0; i < n; ++i) {
      t[i] = _mm256_maddubs_epi16(t[i], b);
      acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(t[i], ones));
    }
  }
  __m256i s = acc[0];
  for (int i = 1; i < n; ++i) s = _mm256_xor_si256(s, acc[i]);
  return _mm256_extract_epi32(s, 0);
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

/// Seconds of the fastest of `repeats` runs of `loop` on `threads` threads at once (one more run
/// first, untimed: it wakes the cores up). Results are summed into a volatile sink so no loop
/// is optimised away.
template <class Loop>
double best_seconds(int threads, int repeats, Loop loop) {
  volatile double sink = 0;
  double best = 1e30;
  for (int r = 0; r < repeats + 1; ++r) {
    std::vector<double> results(static_cast<std::size_t>(threads));
    auto start = clock_type::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] { results[static_cast<std::size_t>(t)] = double(loop()); });
    for (auto& th : pool) th.join();
    double s = std::chrono::duration<double>(clock_type::now() - start).count();
    if (r > 0) best = std::min(best, s);
    for (double v : results) sink = sink + v;
  }
  return best;
}

} // namespace

double measure_fma_gflops(int threads, int repeats) {
  threads = std::max(threads, 1);
#ifdef DUET_X86
  if (engine::kernels::current_simd() == engine::kernels::simd::avx512_vnni)
    return flop_per_call_avx512 * threads / best_seconds(threads, repeats, fma_loop_avx512) / 1e9;
#endif
  const bool simd = has_avx2_fma();
  const double flop_per_call = simd ? flop_per_call_avx2 : flop_per_call_scalar;
  const double seconds = best_seconds(threads, repeats, simd ? fma_loop_avx2 : fma_loop_scalar);
  return flop_per_call * threads / seconds / 1e9;
}

double measure_int8_gops(int threads, int repeats) {
#ifdef DUET_X86
  threads = std::max(threads, 1);
  int (*loop)() = nullptr;
  double macs = int8_mac_per_call;
  switch (engine::kernels::current_simd()) {
  case engine::kernels::simd::avx2:
    loop = int8_loop_avx2;
    break;
  case engine::kernels::simd::avx_vnni:
    loop = int8_loop_avx_vnni;
    break;
  case engine::kernels::simd::avx512_vnni:
    loop = int8_loop_avx512_vnni;
    macs = 64.0 * chains_512 * iterations; // 512-bit steps
    break;
  case engine::kernels::simd::scalar:
    return 0.0;
  }
  return 2.0 * macs * threads / best_seconds(threads, repeats, loop) / 1e9;
#else
  (void)threads;
  (void)repeats;
  return 0.0;
#endif
}

} // namespace duet::bench
