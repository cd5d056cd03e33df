#pragma once

#include <cstddef>

namespace duet::bench {

/// This machine's memory speed, measured in the same run as the benchmark it is compared with:
/// every `duet bench` ratio is against these figures, never against a number from a spec sheet.
struct memory_baseline {
  double memcpy_gbps; ///< one thread, copying `bytes` from one buffer to another (reused)
  double read_gbps;   ///< all `threads`, reading `bytes` once (the decode roofline input)
  std::size_t bytes;  ///< working-set size measured
  int threads;        ///< threads used for the read figure
};

/// memcpy bandwidth in GB/s (1e9 bytes/s) for one copy of `bytes`, best of `repeats`.
double measure_memcpy_gbps(std::size_t bytes, int repeats = 5);

/// Read bandwidth in GB/s over `bytes` with `threads` threads, best of `repeats`.
double measure_read_gbps(std::size_t bytes, int threads, int repeats = 5);

/// Both figures for a working set of `bytes`.
memory_baseline measure_memory(std::size_t bytes, int threads);

} // namespace duet::bench
