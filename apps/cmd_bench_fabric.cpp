// `duet bench fabric`: TTFT and time per output token, integrated vs disaggregated, through the
// real embedded cluster; KV transfer broken out; recovery from a killed decode lane.
// bench/fabric_bench.hpp says what each figure measures.
#include "apps/command.hpp"
#include "apps/progress.hpp"
#include "bench/fabric_bench.hpp"
#include "engine/kv_dtype.hpp"

#include <fmt/core.h>

namespace duet::apps {

namespace {

void print_latency(const char* name, const bench::latency_summary& s) {
  fmt::print("  {:<28} p50 {:8.3f} ms   p99 {:8.3f} ms   mean {:8.3f} ms   ({} samples)\n", name,
             s.p50_ms, s.p99_ms, s.mean_ms, s.samples);
}

void setup_bench_fabric(CLI::App& app) {
  auto o = std::make_shared<bench::fabric_bench_options>();
  o->model_path = default_models_dir() + "/stories260K.bin";
  o->tokenizer_path = default_models_dir() + "/tok512.bin";
  auto* cmd = bench_command(app).add_subcommand(
      "fabric", "TTFT / TPOT integrated vs disaggregated, KV transfer, lane recovery");
  cmd->add_option("--model,-m", o->model_path, "Model file")->capture_default_str();
  cmd->add_option("--tokenizer,-z", o->tokenizer_path, "llama2.c tokenizer (not for GGUF)")
      ->capture_default_str();
  cmd->add_option("--transport", o->transport,
                  "KV transport: inproc, zmq+tcp, zmq+ipc, fabric+shm, fabric+tcp, actor")
      ->capture_default_str();
  cmd->add_option("--requests", o->requests, "Requests per mode")->capture_default_str();
  cmd->add_option("--prompt-tokens", o->prompt_tokens, "Prompt length")->capture_default_str();
  cmd->add_option("--max-tokens", o->max_tokens, "Output tokens per request")
      ->capture_default_str();
  cmd->add_option("--split", o->prefill_split, "Prefill shards per pipeline")
      ->capture_default_str();
  cmd->add_option("--chunk", o->chunk_tokens, "Prefill chunk tokens")->capture_default_str();
  cmd->add_option("--recoveries", o->recoveries, "Decode lanes killed (0: skip)")
      ->capture_default_str();
  cmd->add_option("--threads", o->threads, "Engine threads per actor")->capture_default_str();
  auto kv = std::make_shared<std::string>("auto");
  add_kv_dtype_option(cmd, *kv);
  cmd->callback([o, kv] {
    o->kv_dtype = engine::parse_kv_dtype(*kv);
    progress bar("bench fabric");
    o->on_progress = [&bar](double fraction, std::string_view step) { bar.update(fraction, step); };
    auto r = bench::run_fabric_bench(*o);
    bar.finish("measured");
    fmt::print("model {}  prompt {} tokens  output {} tokens  transport {}  split {}  chunk {}  "
               "kv {}{}\n",
               r.model, r.prompt_tokens, o->max_tokens, o->transport, o->prefill_split,
               o->chunk_tokens, engine::dtype_name(r.kv_type), *kv == "auto" ? " (auto)" : "");
    for (const auto* m : {&r.integrated, &r.disaggregated}) {
      fmt::print("{}\n", m->mode);
      print_latency("TTFT", m->ttft);
      print_latency("TPOT", m->tpot);
    }
    const auto& d = r.disaggregated;
    fmt::print("KV transfer (disaggregated, per request)\n");
    fmt::print("  bytes {:.0f} in {:.1f} segments, sender-side time {:.3f} ms -> {:.2f} GB/s\n",
               d.kv_bytes_per_request, d.kv_segments_per_request, d.kv_send_ms_per_request,
               r.transport_gbps);
    double delta = d.ttft.p50_ms - r.integrated.ttft.p50_ms;
    double bound = d.kv_send_ms_per_request + 2.0;
    fmt::print("  TTFT disaggregated - integrated (p50) = {:.3f} ms; target <= KV bytes / "
               "bandwidth + 2 ms = {:.3f} ms: {}\n",
               delta, bound, delta <= bound ? "met" : "NOT met");
    fmt::print("  transfer hidden behind prefill by layer-wise streaming: {:.0f}%\n",
               100.0 * r.hidden_share);
    if (r.recovery.samples > 0) {
      fmt::print("recovery from a killed decode lane (failure -> next token)\n");
      print_latency("recovery", r.recovery);
      print_latency("recompute floor (integrated)", r.recompute);
      fmt::print("  target p99 < 100 ms + recompute ({:.3f} ms): {}\n", r.recompute.p99_ms,
                 r.recovery.p99_ms < 100.0 + r.recompute.p99_ms ? "met" : "NOT met");
    }
  });
}

const register_command reg{&setup_bench_fabric};

} // namespace
} // namespace duet::apps
