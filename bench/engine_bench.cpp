#include "bench/engine_bench.hpp"

#include "bench/compute_baseline.hpp"
#include "bench/memory_baseline.hpp"
#include "engine/error.hpp"
#include "engine/forward.hpp"
#include "engine/kernels.hpp"
#include "engine/kv_cache.hpp"
#include "engine/model_file.hpp"
#include "engine/sampler.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <string>

#include <unistd.h>

namespace duet::bench {

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}

std::string weight_types(const engine::model_weights& w) {
  std::set<std::string> names;
  auto add = [&](const engine::tensor_view& t) { names.insert(std::string(dtype_name(t.type))); };
  add(w.classifier);
  for (const auto& l : w.layers) {
    add(l.wq), add(l.wk), add(l.wv), add(l.wo), add(l.w1), add(l.w2), add(l.w3);
  }
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : "+") + n;
  return out;
}

/// 2 FLOP per weight of every matrix a token goes through (attention's own arithmetic, which
/// grows with the context, is left out: it is small next to the weights at these lengths).
double matmul_flop(const engine::model_weights& w) {
  auto elems = [](const engine::tensor_view& t) {
    return static_cast<double>(t.rows) * static_cast<double>(t.cols);
  };
  double n = elems(w.classifier);
  for (const auto& l : w.layers)
    n += elems(l.wq) + elems(l.wk) + elems(l.wv) + elems(l.wo) + elems(l.w1) + elems(l.w2) +
         elems(l.w3);
  return 2.0 * n;
}

/// Resident set of this process now, from /proc/self/statm (0 if it cannot be read).
std::size_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::size_t total_pages = 0, resident_pages = 0;
  if (!(statm >> total_pages >> resident_pages)) return 0;
  return resident_pages * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

/// Bytes of this process on transparent huge pages now (AnonHugePages of
/// /proc/self/smaps_rollup; 0 if it cannot be read): whether the packed q8_0 weights and the KV
/// pool got the huge pages they ask for (THP "never", or no free 2 MiB pages, gives 4 KiB ones).
std::size_t huge_page_resident_bytes() {
  std::ifstream rollup("/proc/self/smaps_rollup");
  std::string key;
  std::size_t kib = 0;
  while (rollup >> key) {
    if (key == "AnonHugePages:" && rollup >> kib) return kib * 1024;
    rollup.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  return 0;
}

} // namespace

double engine_bench_result::compute_ceiling_tokens_per_s(int prompt_tokens) const {
  const double peak = int8_gops > 0 ? int8_gops : peak_gflops;
  const double flop =
      prompt_tokens > 0 ? matmul_flop_per_token - classifier_flop + classifier_flop / prompt_tokens
                        : matmul_flop_per_token;
  return flop <= 0 ? 0.0 : peak * 1e9 / flop;
}

double engine_bench_figure::tokens_per_s() const {
  double best = 0;
  for (std::size_t r = 0; r < round_seconds.size(); ++r)
    best = std::max(best, round_tokens_per_s(r));
  return best;
}

double engine_bench_figure::mean_tokens_per_s() const {
  double total = 0;
  for (double s : round_seconds) total += s;
  return total > 0 ? tokens * static_cast<double>(round_seconds.size()) / total : 0.0;
}

double engine_bench_result::read_gbps() const {
  double best = 0;
  for (double g : read_gbps_rounds) best = std::max(best, g);
  return best;
}

namespace {
double roofline(double gbps, std::size_t bytes) {
  return bytes == 0 ? 0.0 : gbps * 1e9 / static_cast<double>(bytes);
}
} // namespace

double engine_bench_result::roofline_tokens_per_s() const {
  return roofline(read_gbps(), weight_bytes_per_token);
}

double engine_bench_result::roofline_tokens_per_s(std::size_t round) const {
  return roofline(read_gbps_rounds[round], weight_bytes_per_token);
}

engine_bench_result run_engine_bench(const engine_bench_options& o) {
  const int rounds = std::max(1, o.rounds);
  // Stages: load, FMA peak, then per round the bandwidth, each prefill length, each batch.
  const double stages =
      2.0 + rounds * (1.0 + static_cast<double>(o.prefill_tokens.size() + o.decode_batches.size()));
  double stage = 0;
  auto report = [&](std::string_view step) {
    if (o.on_progress) o.on_progress(stage++ / stages, step);
  };
  report("loading the model");
  auto model = engine::open_model(o.model, o.tokenizer);
  const auto& w = *model.weights;
  const auto& c = w.config;
  engine_bench_result res;
  res.model = o.model;
  res.weight_types = weight_types(w);
  res.simd = std::string(engine::kernels::simd_level());
  res.threads = o.threads;
  res.rounds = rounds;
  res.warmup_steps = o.warmup_steps;
  res.weight_bytes_per_token = w.decode_bytes_per_token();
  res.read_bytes = o.bandwidth_bytes != 0 ? o.bandwidth_bytes : res.weight_bytes_per_token;
  report("measuring FMA peak");
  res.peak_gflops = measure_fma_gflops(o.threads);
  if (res.weight_types == "q8_0") res.int8_gops = measure_int8_gops(o.threads);
  res.matmul_flop_per_token = matmul_flop(w);
  res.classifier_flop =
      2.0 * static_cast<double>(w.classifier.rows) * static_cast<double>(w.classifier.cols);

  int batch_max = 1;
  for (int b : o.decode_batches) batch_max = std::max(batch_max, b);
  engine::runner run(w, engine::runner_options{o.threads, std::max(64, batch_max)});
  res.kv_dtype = o.kv_dtype;
  res.kv_type = engine::resolve_kv_dtype(o.kv_dtype, w);
  auto kc = engine::kv_cache_config::for_model(c, 0, c.n_layers, 0, res.kv_type);
  kc.blocks_max = kc.blocks_for(batch_max);
  engine::kv_cache kv(kc);
  res.kv_pool_bytes = kv.pool_bytes();

  std::mt19937 rng(1234);
  std::uniform_int_distribution<int> any_token(3, c.vocab_size - 1);
  auto random_tokens = [&](int n) {
    std::vector<int> t(static_cast<std::size_t>(n));
    for (auto& x : t) x = any_token(rng);
    return t;
  };
  std::vector<float> logits(static_cast<std::size_t>(c.vocab_size) *
                            static_cast<std::size_t>(batch_max));

  engine::seq_id next_id = 1;
  {
    // Warm-up: fault the mapped weights in so the first figure is not a disk read.
    auto id = next_id++;
    kv.seq_add(id);
    kv.seq_reserve(id, 8);
    run.prefill(kv, id, 0, random_tokens(8), logits);
    kv.seq_free(id);
  }
  for (int n : o.prefill_tokens) res.prefill.push_back({std::min(n, c.seq_len), {}});
  for (int b : o.decode_batches) res.decode.push_back({b, {}});
  std::vector<std::vector<int>> prompts;
  for (const auto& p : res.prefill) prompts.push_back(random_tokens(p.n));
  // Each decoding sequence starts from a prompt of `prompt` tokens, runs the warm-up steps,
  // then the timed ones from position `timed_from` (context_tokens where the model has room).
  const int prompt = std::max(1, o.context_tokens - o.warmup_steps);
  const int timed_from = prompt + o.warmup_steps;
  if (!o.decode_batches.empty() && timed_from + o.decode_steps + 1 > c.seq_len)
    throw engine::engine_error(
        engine::engine_errc::invalid_argument,
        fmt::format("a {}-token prompt, {} warm-up and {} timed decode steps do not fit in this "
                    "model's {} positions: use fewer --steps or --warmup-steps",
                    prompt, o.warmup_steps, o.decode_steps, c.seq_len));

  // Round after round, every figure once per round (not one figure's rounds back to back):
  // a ratio is then taken between figures measured seconds apart, in the same phase of a
  // shared VM's speed, which changes over seconds (the Xeon VM of 2026-11-29 read 13 or
  // 25 GB/s in runs a minute apart).
  for (int round = 0; round < rounds; ++round) {
    const std::string of = fmt::format(" (round {} of {})", round + 1, rounds);
    report("measuring read bandwidth" + of);
    res.read_gbps_rounds.push_back(measure_read_gbps(res.read_bytes, o.threads));

    for (std::size_t i = 0; i < res.prefill.size(); ++i) {
      auto& fig = res.prefill[i];
      report(fmt::format("prefill {} tokens{}", fig.n, of));
      // With a warm-up, the same prefill runs untimed first, so that the timed run is in the
      // steady state (see warmup_steps).
      const int runs = o.warmup_steps > 0 ? 2 : 1;
      for (int run_i = 0; run_i < runs; ++run_i) {
        auto id = next_id++;
        kv.seq_add(id);
        kv.seq_reserve(id, fig.n);
        auto t0 = clock_type::now();
        run.prefill(kv, id, 0, prompts[i], logits);
        if (run_i == runs - 1) fig.round_seconds.push_back(seconds_since(t0));
        kv.seq_free(id);
      }
    }

    for (auto& fig : res.decode) {
      const int b = fig.n;
      report(fmt::format("decode {} sequences{}", b, of));
      std::vector<engine::decode_item> items;
      for (int i = 0; i < b; ++i) {
        auto id = next_id++;
        kv.seq_add(id);
        kv.seq_reserve(id, timed_from + o.decode_steps);
        run.prefill(kv, id, 0, random_tokens(prompt), logits);
        items.push_back({id, any_token(rng), prompt});
      }
      auto t0 = clock_type::now();
      for (int s = 0; s < o.warmup_steps + o.decode_steps; ++s) {
        if (s == o.warmup_steps) t0 = clock_type::now();
        run.decode_batch(kv, items, logits);
        for (std::size_t i = 0; i < items.size(); ++i) {
          // The greedy next token, as a decode lane picks it, keeps the work realistic;
          // positions advance together.
          items[i].token = engine::sample_argmax(std::span<const float>(logits).subspan(
              i * static_cast<std::size_t>(c.vocab_size), static_cast<std::size_t>(c.vocab_size)));
          ++items[i].pos;
        }
      }
      fig.round_seconds.push_back(seconds_since(t0));
      for (const auto& it : items) kv.seq_free(it.seq);
    }
  }
  for (auto& fig : res.prefill) fig.tokens = fig.n;
  // Timed step s (0-based) attends timed_from + s + 1 positions: on average
  // timed_from + (steps + 1) / 2.
  const auto kv_row_bytes =
      static_cast<double>(engine::row_bytes(res.kv_type, static_cast<std::size_t>(c.kv_dim())));
  for (auto& fig : res.decode) {
    fig.tokens = static_cast<double>(fig.n) * o.decode_steps;
    fig.kv_bytes_per_step =
        fig.n * c.n_layers * 2 * kv_row_bytes * (timed_from + (o.decode_steps + 1) / 2.0);
  }
  res.model_file_bytes = static_cast<std::size_t>(std::filesystem::file_size(o.model));
  res.resident_bytes = resident_bytes();
  res.huge_page_bytes = huge_page_resident_bytes();
  if (o.on_progress) o.on_progress(1.0, "done");
  return res;
}

std::string format_engine_bench(const engine_bench_result& r) {
  std::string out;
  auto line = [&](const std::string& s) { out += s + "\n"; };
  line(fmt::format("model            {} ({} weights, {} matmul, {} threads)", r.model,
                   r.weight_types, r.simd, r.threads));
  line(fmt::format("weights/step     {:.1f} MB read per decode step (whole batch)",
                   static_cast<double>(r.weight_bytes_per_token) / 1e6));
  line(fmt::format("kv pool          {:.1f} MB preallocated, {} K and V{} (peak memory = the "
                   "weights + this; q8_0 matrices are held once, packed for the kernels)",
                   static_cast<double>(r.kv_pool_bytes) / 1e6, engine::dtype_name(r.kv_type),
                   r.kv_dtype == engine::kv_dtype_choice::automatic
                       ? std::string(r.kv_type == engine::dtype::f32
                                         ? " (--kv-dtype auto: the weights are f32)"
                                         : " (--kv-dtype auto: the weights are 16-bit or q8_0; "
                                           "--kv-dtype f32 for f32 K and V)")
                       : std::string()));
  if (r.resident_bytes > 0)
    line(fmt::format(
        "resident         {:.1f} MB at the end of the run, {:.1f} MB of it on huge "
        "pages (model file {:.1f} MB, KV pool {:.1f} MB reserved: its blocks count "
        "once written)",
        static_cast<double>(r.resident_bytes) / 1e6, static_cast<double>(r.huge_page_bytes) / 1e6,
        static_cast<double>(r.model_file_bytes) / 1e6, static_cast<double>(r.kv_pool_bytes) / 1e6));
  // "lo-hi" of f over the rounds, e.g. the ratio of two figures measured in the same round.
  auto per_round = [&](auto&& f, const char* fmt_one) {
    double lo = 0, hi = 0;
    for (std::size_t i = 0; i < r.read_gbps_rounds.size(); ++i) {
      const double v = f(i);
      lo = i == 0 ? v : std::min(lo, v);
      hi = i == 0 ? v : std::max(hi, v);
    }
    return fmt::format(fmt::runtime(fmt_one), lo) + "-" + fmt::format(fmt::runtime(fmt_one), hi);
  };
  line(fmt::format("read bandwidth   {:.2f} GB/s, best round ({} per round; {} threads, reading "
                   "{:.1f} MB on huge pages over and over: a decode step's bytes, measured now)",
                   r.read_gbps(),
                   per_round([&](std::size_t i) { return r.read_gbps_rounds[i]; }, "{:.1f}"),
                   r.threads, static_cast<double>(r.read_bytes) / 1e6));
  double roof = r.roofline_tokens_per_s();
  line(fmt::format("roofline         {:.2f} tok/s single-sequence decode (bandwidth / bytes)",
                   roof));
  const double ceiling = r.compute_ceiling_tokens_per_s();
  line(fmt::format("fma peak         {:.1f} GFLOP/s ({} threads, f32, measured now)", r.peak_gflops,
                   r.threads));
  if (r.int8_gops > 0)
    line(fmt::format("int8 peak        {:.1f} GOP/s ({} threads, {} multiply-adds, measured now)",
                     r.int8_gops, r.threads, r.simd));
  // Until 2026-11-29 the prefill lines were set against this ceiling too, which counts the
  // classifier for every token: a prefill runs it for the last token only, so its share of
  // the peak read 22% too high (stories110M: 219 vs 170 MFLOP per token).
  line(fmt::format("compute ceiling  {:.1f} tok/s with the classifier for every token ({} peak / "
                   "{:.0f} MFLOP per token){}; a prefill runs it once ({:.0f} MFLOP per token)",
                   ceiling, r.int8_gops > 0 ? "int8" : "fma", r.matmul_flop_per_token / 1e6,
                   roof > 0 ? fmt::format(" = {:.1f}x the decode roofline", ceiling / roof) : "",
                   (r.matmul_flop_per_token - r.classifier_flop) / 1e6));
  const engine_bench_figure* single = nullptr;
  for (const auto& d : r.decode)
    if (d.n == 1) single = &d;
  line(fmt::format("rounds           {}, each measuring every figure once: the best round is "
                   "shown, (mean ...) over all of them; a ratio is best against best, then its "
                   "range over the rounds (both figures from the same round)",
                   r.rounds));
  line(r.warmup_steps > 0
           ? fmt::format("warm-up          {} untimed decode steps before each decode figure, one "
                         "untimed run before each prefill (the steady state, as the read "
                         "baseline's)",
                         r.warmup_steps)
           : std::string("warm-up          none (--warmup-steps 0): each figure's first run is "
                         "timed, after the other figures have pushed the weights out of cache"));
  // "x single-seq" of figure f: best against best, then per round. With a target (x), whether
  // the best-against-best ratio meets it, to two decimals so that 7.96x does not read as 8.0x.
  auto times_single = [&](const engine_bench_figure& f, double target) -> std::string {
    const double ratio = f.tokens_per_s() / single->tokens_per_s();
    return fmt::format(
        "   {:.2f}x single-seq ({}per round {}x)", ratio,
        target > 0
            ? fmt::format("target >= {:g}x: {}; ", target, ratio >= target ? "met" : "not met")
            : "",
        per_round(
            [&](std::size_t i) { return f.round_tokens_per_s(i) / single->round_tokens_per_s(i); },
            "{:.1f}"));
  };
  for (const auto& p : r.prefill) {
    const double own = r.compute_ceiling_tokens_per_s(p.n);
    line(fmt::format("prefill {:>4} tok {:>10.1f} tok/s (mean {:.1f}){}{}", p.n, p.tokens_per_s(),
                     p.mean_tokens_per_s(), single != nullptr ? times_single(p, 10.0) : "",
                     own > 0 ? fmt::format(", {:.0f}% of its compute ceiling {:.1f} tok/s",
                                           100.0 * p.tokens_per_s() / own, own)
                             : ""));
  }
  for (const auto& d : r.decode) {
    std::string extra;
    // A batch of n reads the weights once per step, and each sequence's K and V: its ceiling
    // is the smaller of that memory bound and the compute ceiling. Until 2026-11-29 (fifth
    // session) the memory bound was n x the roofline, which leaves the K and V out.
    if (d.n == 1 && roof > 0)
      extra = fmt::format("   {:.0f}% of roofline (target >= 80%: {}; per round {}%)",
                          100.0 * d.tokens_per_s() / roof,
                          d.tokens_per_s() >= 0.8 * roof ? "met" : "not met",
                          per_round(
                              [&](std::size_t i) {
                                return 100.0 * d.round_tokens_per_s(i) / r.roofline_tokens_per_s(i);
                              },
                              "{:.0f}"));
    else if (single != nullptr) {
      // Its memory ceiling: n tokens per step, a step reading the weights once and every
      // sequence's K and V.
      const double memory =
          roof > 0 ? d.n * r.read_gbps() * 1e9 /
                         (static_cast<double>(r.weight_bytes_per_token) + d.kv_bytes_per_step)
                   : 0.0;
      extra = times_single(d, d.n == 32 ? 8.0 : 0.0) +
              (memory > 0 && ceiling > 0
                   ? fmt::format(", {:.0f}% of its ceiling {:.1f} tok/s (the lower of compute "
                                 "and bandwidth / the weights + {:.1f} MB of K and V a step)",
                                 100.0 * d.tokens_per_s() / std::min(memory, ceiling),
                                 std::min(memory, ceiling), d.kv_bytes_per_step / 1e6)
                   : "");
    }
    line(fmt::format("decode {:>3} seq  {:>10.1f} tok/s (mean {:.1f}){}", d.n, d.tokens_per_s(),
                     d.mean_tokens_per_s(), extra));
  }
  return out;
}

} // namespace duet::bench
