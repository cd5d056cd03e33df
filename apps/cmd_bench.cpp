// `duet bench …`: benchmarks that print figures and ratios against baselines measured in the
// same run. `duet bench memory` is the baseline every other benchmark compares with.
#include "apps/command.hpp"
#include "bench/memory_baseline.hpp"

#include <fmt/core.h>

#include <thread>

namespace duet::apps {

CLI::App& bench_command(CLI::App& app) {
  auto existing = app.get_subcommands([](CLI::App* sub) { return sub->get_name() == "bench"; });
  if (!existing.empty()) return *existing.front();
  auto* bench = app.add_subcommand(
      "bench", "Benchmarks: print figures next to baselines measured in the same run");
  bench->require_subcommand(1);
  return *bench;
}

namespace {

void setup_bench_memory(CLI::App& app) {
  struct options {
    std::size_t mib = 256;
    int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  };
  auto opts = std::make_shared<options>();
  auto* cmd = bench_command(app).add_subcommand(
      "memory", "This machine's memcpy and read bandwidth (the roofline inputs)");
  cmd->add_option("--mib", opts->mib, "Working set in MiB")->capture_default_str();
  cmd->add_option("--threads", opts->threads, "Threads for the read figure")->capture_default_str();
  cmd->callback([opts] {
    auto m = bench::measure_memory(opts->mib << 20, opts->threads);
    fmt::print("working set      {} MiB\n", opts->mib);
    fmt::print("memcpy (1 thread) {:.1f} GB/s\n", m.memcpy_gbps);
    fmt::print("read ({} threads) {:.1f} GB/s\n", m.threads, m.read_gbps);
  });
}

const register_command reg{&setup_bench_memory};

} // namespace
} // namespace duet::apps
