#pragma once

// This machine's arithmetic peak, measured in the same run as the benchmark it is compared
// with (as memory_baseline.hpp is for bandwidth). Prefill and batched decode are bound by it:
// a token costs 2 FLOP per weight, so no kernel prefills faster than peak / (2 * weights).

namespace duet::bench {

/// Peak f32 multiply-add throughput in GFLOP/s (1e9 FLOP/s, an FMA counted as 2) with
/// `threads` threads: independent FMA chains on registers, best of `repeats`, in the widest
/// registers the f32 kernels use at engine::kernels::current_simd(): 16-wide where it is
/// avx512_vnni (the multi-token f32 tiles then run in 512-bit registers), else 8-wide
/// (AVX2+FMA when the CPU has it), else scalar multiply-adds. No memory traffic: an upper
/// bound no real kernel reaches.
double measure_fma_gflops(int threads, int repeats = 5);

/// Peak int8 multiply-add throughput in GOP/s (a u8 x s8 multiply-add counted as 2 ops, as an
/// FMA is) with the instructions the q8_0 kernels use at engine::kernels::current_simd():
/// vpdpbusd (AVX-VNNI / AVX512-VNNI, 32 per instruction) or maddubs + madd (AVX2). Chains on
/// registers, best of `repeats`; 0 when the kernels run scalar. A q8_0 matmul also converts and
/// scales every 32-product block in f32, so it stays well below this.
double measure_int8_gops(int threads, int repeats = 5);

} // namespace duet::bench
