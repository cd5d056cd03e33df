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
                  "tagged-message payload path (/rma: RMA writes only); fabric+udp (slow, a "
                  "stand-in for a network provider in tests) on request")
      ->capture_default_str();
  cmd->add_option("--sizes", opts->sizes, "Segment sizes in bytes")->capture_default_str();
  cmd->add_option("--mib", opts->mib_per_point, "MiB streamed per backend, size and round")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--window-segments", opts->window_segments,
                  "Receive window per sender in segments of each size (at least 1 MiB); the "
                  "ring baselines use the same; 0: the default")
      ->capture_default_str()
      ->check(CLI::Range(0, 4096));
  cmd->add_option("--rounds", opts->rounds,
                  "Rounds, each measuring every baseline and backend once; the best round is "
                  "shown, and each ratio also per round (both figures from the same round)")
      ->capture_default_str()
      ->check(CLI::Range(1, 100));
  cmd->callback([opts] {
    progress bar("bench transport");
    opts->on_progress = [&bar](double fraction, std::string_view step) {
      bar.update(fraction, step);
    };
    auto points = bench::run_transport_bench(*opts);
    opts->on_progress = nullptr; // the bar ends with this callback
    bar.finish("measured");
    const std::size_t env = bench::envelope_bytes();
    std::map<std::size_t, const bench::transport_point*> memcpy_at, raw_tcp_at, raw_ipc_at;
    for (const auto& p : points) {
      if (p.name == "memcpy") memcpy_at[p.bytes] = &p;
      if (p.name == "raw zmq+tcp") raw_tcp_at[p.bytes] = &p;
      if (p.name == "raw zmq+ipc") raw_ipc_at[p.bytes] = &p;
    }
    fmt::print("{} rounds: GB/s is the best round's, p50 the median of the rounds' medians, p99 "
               "the highest; \"vs base\" is best against best, its range per round in the note\n",
               opts->rounds);
    fmt::print("{:<24} {:>5} {:>9} {:>10} {:>10} {:>9}  {}\n", "backend", "size", "GB/s", "p50 us",
               "p99 us", "vs base", "note");
    for (const auto& p : points) {
      // Ratios against the baseline each target names: zmq vs raw zmq of the same kind,
      // everything else vs memcpy.
      const bench::transport_point* base = memcpy_at[p.bytes];
      std::string base_name = "memcpy";
      if (p.name == "zmq+tcp") base = raw_tcp_at[p.bytes], base_name = "raw";
      if (p.name == "zmq+ipc") base = raw_ipc_at[p.bytes], base_name = "raw";
      const bool compared = p.name != "memcpy" && p.gbps > 0 && base != nullptr && base->gbps > 0;
      std::string ratio =
          compared ? fmt::format("{:.0f}% {}", 100.0 * p.gbps / base->gbps, base_name) : "-";
      std::string note = p.note;
      if (compared && p.round_gbps.size() > 1) {
        double lo = 0, hi = 0;
        bool any = false;
        for (std::size_t r = 0; r < p.round_gbps.size() && r < base->round_gbps.size(); ++r) {
          if (p.round_gbps[r] <= 0 || base->round_gbps[r] <= 0) continue;
          const double v = 100.0 * p.round_gbps[r] / base->round_gbps[r];
          lo = any ? std::min(lo, v) : v;
          hi = any ? std::max(hi, v) : v;
          any = true;
        }
        if (any)
          note =
              fmt::format("per round {:.0f}-{:.0f}%{}{}", lo, hi, note.empty() ? "" : "; ", note);
      }
      std::string size = p.bytes >= (1u << 20) ? fmt::format("{} MiB", p.bytes >> 20)
                                               : fmt::format("{} KiB", p.bytes >> 10);
      if (!p.note.empty() && p.gbps == 0) {
        fmt::print("{:<24} {:>5} {:>9} {:>10} {:>10} {:>9}  {}\n", p.name, size, "-", "-", "-", "-",
                   p.note);
        continue;
      }
      // A baseline that times only the stream (cma ring +xxh3) has no latency.
      const bool timed = p.p50_us > 0 || p.p99_us > 0;
      fmt::print("{:<24} {:>5} {:>9.2f} {:>10} {:>10} {:>9}  {}\n", p.name, size, p.gbps,
                 timed ? fmt::format("{:.1f}", p.p50_us) : "-",
                 timed ? fmt::format("{:.1f}", p.p99_us) : "-", ratio, note);
    }
    fmt::print("envelope: {} bytes per segment = {:.3f}% of 64 KiB, {:.4f}% of 1 MiB\n", env,
               100.0 * static_cast<double>(env) / (64 << 10),
               100.0 * static_cast<double>(env) / (1 << 20));
  });
}

const register_command reg{&setup_bench_transport};

} // namespace
} // namespace duet::apps
