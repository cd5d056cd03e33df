#pragma once

// This machine's arithmetic peak, measured in the same run as the benchmark it is compared
// with (as memory_baseline.hpp is for bandwidth). Prefill and batched decode are bound by it:
// a token costs 2 FLOP per weight, so no kernel prefills faster than peak / (2 * weights).

namespace duet::bench {

/// Peak f32 multiply-add throughput in GFLOP/s (1e9 FLOP/s, an FMA counted as 2) with
/// `threads` threads: independent 8-wide FMA chains on registers (AVX2+FMA when the CPU has
/// it, else scalar multiply-adds), best of `repeats`. No memory traffic: an upper bound no
/// real kernel reaches.
double measure_fma_gflops(int threads, int repeats = 5);

} // namespace duet::bench
