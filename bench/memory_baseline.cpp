#include "bench/memory_baseline.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace duet::bench {

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point start) {
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

// Sums 64-bit words so the compiler cannot drop the loads; the result is kept in a volatile.
std::uint64_t sum_words(const std::uint64_t* p, std::size_t n) {
  std::uint64_t a = 0, b = 0, c = 0, d = 0;
  std::size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    a += p[i];
    b += p[i + 1];
    c += p[i + 2];
    d += p[i + 3];
  }
  for (; i < n; ++i) a += p[i];
  return a + b + c + d;
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
  std::vector<std::uint64_t> data(words, 1);
  volatile std::uint64_t sink = 0;
  double best = 1e30;
  for (int r = 0; r < repeats + 1; ++r) {
    std::vector<std::uint64_t> partial(static_cast<std::size_t>(threads), 0);
    auto start = clock_type::now();
    std::vector<std::thread> pool;
    std::size_t per = words / static_cast<std::size_t>(threads);
    for (int t = 0; t < threads; ++t) {
      std::size_t begin = per * static_cast<std::size_t>(t);
      std::size_t n = (t == threads - 1) ? words - begin : per;
      pool.emplace_back([&, t, begin, n] {
        partial[static_cast<std::size_t>(t)] = sum_words(data.data() + begin, n);
      });
    }
    for (auto& th : pool) th.join();
    double s = seconds_since(start);
    if (r > 0) best = std::min(best, s); // the first pass warms the pages
    for (auto v : partial) sink = sink + v;
  }
  return static_cast<double>(words * sizeof(std::uint64_t)) / best / 1e9;
}

memory_baseline measure_memory(std::size_t bytes, int threads) {
  return memory_baseline{measure_memcpy_gbps(bytes), measure_read_gbps(bytes, threads), bytes,
                         threads};
}

} // namespace duet::bench
