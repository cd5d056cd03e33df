#include "bench/memory_baseline.hpp"

#include "engine/huge_page_memory.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <span>
#include <thread>
#include <vector>

namespace duet::bench {

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point start) {
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

// Sums 64-bit words so the compiler cannot drop the loads; the result is kept in a volatile.
// The words go as `Streams` equal parts read side by side, a 64-byte line of each per step;
// `prefetch_ahead` (bytes, 0: none) adds a software prefetch per line that far ahead, as the
// engine's kernels do. With one thread on a server part the hardware prefetchers alone keep
// too few lines in flight: on the Xeon VM of 2026-11-29, reading 116 MB, one stream 8.9-9.2 GB/s,
// with a 4 KiB prefetch 16.8-18.3, four streams with it 17.1-18.8 (a scratch program, 3 runs).
// `far_ahead` (bytes, 0: none) adds a second prefetch per line, into L2 only, that much further
// ahead: one stream then read 17.2-21.5 GB/s where four streams with the near prefetch read
// 15.9-18.3 (the same VM, 2 runs, the ways alternated).
template <int Streams, std::size_t far_ahead = 0>
std::uint64_t sum_words(const std::uint64_t* p, std::size_t n, std::size_t prefetch_ahead) {
  std::uint64_t acc[Streams][8] = {};
  const std::size_t per = n / Streams / 8 * 8; // words per stream, whole lines
  const std::size_t ahead = prefetch_ahead / sizeof(std::uint64_t);
  for (std::size_t i = 0; i < per; i += 8)
    for (int s = 0; s < Streams; ++s) {
      const std::uint64_t* q = p + static_cast<std::size_t>(s) * per + i;
      if (ahead != 0) __builtin_prefetch(q + ahead, 0, 3);
      if constexpr (far_ahead != 0) __builtin_prefetch(q + far_ahead / sizeof(std::uint64_t), 0, 2);
      for (int k = 0; k < 8; ++k) acc[s][k] += q[k];
    }
  std::uint64_t total = 0;
  for (std::size_t i = per * Streams; i < n; ++i) total += p[i];
  for (const auto& a : acc)
    for (std::uint64_t v : a) total += v;
  return total;
}

} // namespace

double measure_memcpy_gbps(std::size_t bytes, int repeats) {
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  std::memcpy(dst.data(), src.data(), bytes); // fault the pages in before timing
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    auto start = clock_type::now();
    std::memcpy(dst.data(), src.data(), bytes);
    best = std::min(best, seconds_since(start));
    src[r % bytes] = static_cast<char>(dst[(r * 7) % bytes] + 1);
  }
  return static_cast<double>(bytes) / best / 1e9;
}

double measure_read_gbps(std::size_t bytes, int threads, int repeats) {
  threads = std::max(threads, 1);
  std::size_t words = bytes / sizeof(std::uint64_t);
  // Memory as the engine's packed weights are laid out (2 MiB-aligned, huge pages asked for):
  // on 4 KiB pages one thread read 116 MB ~9% slower here (TLB misses), which would set the
  // roofline below what the machine gives a reader.
  engine::huge_page_memory memory(words * sizeof(std::uint64_t), "the read baseline");
  std::span<std::uint64_t> data(reinterpret_cast<std::uint64_t*>(memory.data()), words);
  std::fill(data.begin(), data.end(), std::uint64_t{1});
  volatile std::uint64_t sink = 0;
  double best = 1e30;
  // The best pass of any way of reading: the baseline is what a reader can get.
  struct way {
    int streams;
    std::size_t prefetch; ///< bytes ahead into L1, 0: none
    bool far;             ///< a second prefetch 16 KiB ahead into L2
  };
  constexpr way ways[] = {
      {1, 0, false}, {1, 4096, false}, {4, 0, false}, {4, 4096, false}, {1, 4096, true}};
  for (const way w : ways) {
    for (int r = 0; r < repeats + 1; ++r) {
      std::vector<std::uint64_t> partial(static_cast<std::size_t>(threads), 0);
      auto start = clock_type::now();
      std::vector<std::thread> pool;
      std::size_t per = words / static_cast<std::size_t>(threads);
      for (int t = 0; t < threads; ++t) {
        std::size_t begin = per * static_cast<std::size_t>(t);
        std::size_t n = (t == threads - 1) ? words - begin : per;
        pool.emplace_back([&, t, begin, n] {
          partial[static_cast<std::size_t>(t)] =
              w.far            ? sum_words<1, 16384>(data.data() + begin, n, w.prefetch)
              : w.streams == 4 ? sum_words<4>(data.data() + begin, n, w.prefetch)
                               : sum_words<1>(data.data() + begin, n, w.prefetch);
        });
      }
      for (auto& th : pool) th.join();
      double s = seconds_since(start);
      if (r > 0) best = std::min(best, s); // the first pass warms the pages and caches
      for (auto v : partial) sink = sink + v;
    }
  }
  return static_cast<double>(words * sizeof(std::uint64_t)) / best / 1e9;
}

memory_baseline measure_memory(std::size_t bytes, int threads) {
  return memory_baseline{measure_memcpy_gbps(bytes), measure_read_gbps(bytes, threads), bytes,
                         threads};
}

} // namespace duet::bench
