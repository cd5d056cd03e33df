// `duet bench engine`: prefill / decode throughput of a model next to the memory roofline.
#include "apps/command.hpp"
#include "apps/progress.hpp"
#include "bench/engine_bench.hpp"
#include "engine/kernels.hpp"
#include "engine/kv_dtype.hpp"

#include <fmt/core.h>

namespace duet::apps {

namespace {

void setup_bench_engine(CLI::App& app) {
  struct options {
    bench::engine_bench_options bench;
    std::string kv = "auto";
    std::string simd = "best";
  };
  auto o = std::make_shared<options>();
  auto* cmd = bench_command(app).add_subcommand(
      "engine", "Engine prefill and decode tok/s vs this machine's memory roofline");
  cmd->footer("Make benchmark models with `duet synth`, e.g.\n"
              "  duet synth --shape stories110M --type q8_0 --out /tmp/s110m-q8.gguf\n"
              "  duet bench engine --model /tmp/s110m-q8.gguf --threads 2");
  cmd->add_option("--model,-m", o->bench.model, "Model file (.gguf or llama2.c .bin)")->required();
  cmd->add_option("--tokenizer,-z", o->bench.tokenizer, "llama2.c tokenizer (for .bin models)");
  cmd->add_option("--threads", o->bench.threads, "Engine threads")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  cmd->add_option("--prefill", o->bench.prefill_tokens, "Prompt lengths to prefill")
      ->capture_default_str();
  cmd->add_option("--batches", o->bench.decode_batches, "Concurrent sequences to decode")
      ->capture_default_str();
  cmd->add_option("--steps", o->bench.decode_steps, "Timed decode steps per batch size")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  cmd->add_option("--warmup-steps", o->bench.warmup_steps,
                  "Untimed decode steps before the timed ones (a figure is then the steady "
                  "state, as the read baseline is)")
      ->capture_default_str()
      ->check(CLI::Range(0, 100000));
  cmd->add_option("--rounds", o->bench.rounds,
                  "Timings per prefill and decode figure; the best is reported with the mean "
                  "beside it (the bandwidth and peak baselines are best-of passes too)")
      ->capture_default_str()
      ->check(CLI::Range(1, 100));
  add_kv_dtype_option(cmd, o->kv);
  cmd->add_option("--simd", o->simd,
                  "Cap the kernels' instruction set, to measure what each level adds (a level "
                  "this CPU lacks falls back to the next one below it; the model line says "
                  "which ran)")
      ->capture_default_str()
      ->check(CLI::IsMember({"best", "scalar", "avx2", "avxvnni", "avx512vnni"}));
  cmd->callback([o] {
    using engine::kernels::simd;
    engine::kernels::set_simd_limit(o->simd == "scalar"    ? simd::scalar
                                    : o->simd == "avx2"    ? simd::avx2
                                    : o->simd == "avxvnni" ? simd::avx_vnni
                                                           : simd::avx512_vnni);
    o->bench.kv_dtype = engine::parse_kv_dtype(o->kv);
    progress bar("bench engine");
    o->bench.on_progress = [&bar](double fraction, std::string_view step) {
      bar.update(fraction, step);
    };
    auto r = bench::run_engine_bench(o->bench);
    bar.finish("measured");
    fmt::print("{}", bench::format_engine_bench(r));
  });
}

const register_command reg{&setup_bench_engine};

} // namespace
} // namespace duet::apps
