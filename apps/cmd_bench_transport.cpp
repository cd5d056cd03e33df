// `duet bench transport`: KV-segment throughput and latency per backend next to memcpy and
// raw ZeroMQ measured in the same run (bench/transport_bench.hpp says how).
#include "apps/command.hpp"
#include "apps/progress.hpp"
#include "bench/transport_bench.hpp"

#include <fmt/core.h>

#include <map>

namespace duet::apps {

namespace {

void setup_bench_transport(CLI::App& app) {
  auto opts = std::make_shared<bench::transport_bench_options>();
  auto* cmd = bench_command(app).add_subcommand(
      "transport", "KV segment throughput and latency per transport backend vs memcpy and raw zmq");
  cmd->add_option("--backends", opts->backends,
                  "Backends to measure; fabric+shm/tagged, fabric+tcp/tagged force fabric's "
                  "tagged-message payload path (/rma: RMA writes only)")
      ->capture_default_str();
  cmd->add_option("--sizes", opts->sizes, "Segment sizes in bytes")->capture_default_str();
  cmd->add_option("--mib", opts->mib_per_point, "MiB streamed per backend and size")
      ->capture_default_str();
  cmd->callback([opts] {
    progress bar("bench transport");
    opts->on_progress = [&bar](double fraction, std::string_view step) {
      bar.update(fraction, step);
    };
    auto points = bench::run_transport_bench(*opts);
    opts->on_progress = nullptr; // the bar ends with this callback
    bar.finish("measured");
    const std::size_t env = bench::envelope_bytes();
    fmt::print("{:<24} {:>5} {:>9} {:>10} {:>10} {:>9}  {}\n", "backend", "size", "GB/s", "p50 us",
               "p99 us", "vs base", "note");
    std::map<std::size_t, double> memcpy_gbps, raw_tcp_gbps, raw_ipc_gbps;
    for (const auto& p : points) {
      if (p.name == "memcpy") memcpy_gbps[p.bytes] = p.gbps;
      if (p.name == "raw zmq+tcp") raw_tcp_gbps[p.bytes] = p.gbps;
      if (p.name == "raw zmq+ipc") raw_ipc_gbps[p.bytes] = p.gbps;
    }
    for (const auto& p : points) {
      // Ratios against the baseline each target names: zmq vs raw zmq of the same kind,
      // everything else vs memcpy.
      double base = memcpy_gbps[p.bytes];
      std::string base_name = "memcpy";
      if (p.name == "zmq+tcp") base = raw_tcp_gbps[p.bytes], base_name = "raw";
      if (p.name == "zmq+ipc") base = raw_ipc_gbps[p.bytes], base_name = "raw";
      std::string ratio = p.name == "memcpy" || p.gbps == 0
                              ? std::string("-")
                              : fmt::format("{:.0f}% {}", 100.0 * p.gbps / base, base_name);
      std::string size = p.bytes >= (1u << 20) ? fmt::format("{} MiB", p.bytes >> 20)
                                               : fmt::format("{} KiB", p.bytes >> 10);
      if (!p.note.empty() && p.gbps == 0) {
        fmt::print("{:<24} {:>5} {:>9} {:>10} {:>10} {:>9}  {}\n", p.name, size, "-", "-", "-", "-",
                   p.note);
        continue;
      }
      fmt::print("{:<24} {:>5} {:>9.2f} {:>10.1f} {:>10.1f} {:>9}  {}\n", p.name, size, p.gbps,
                 p.p50_us, p.p99_us, ratio, p.note);
    }
    fmt::print("envelope: {} bytes per segment = {:.3f}% of 64 KiB, {:.4f}% of 1 MiB\n", env,
               100.0 * static_cast<double>(env) / (64 << 10),
               100.0 * static_cast<double>(env) / (1 << 20));
  });
}

const register_command reg{&setup_bench_transport};

} // namespace
} // namespace duet::apps
