#include "bench/engine_bench.hpp"

#include "bench/compute_baseline.hpp"
#include "bench/memory_baseline.hpp"
#include "engine/forward.hpp"
#include "engine/kernels.hpp"
#include "engine/kv_cache.hpp"
#include "engine/model_file.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

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

} // namespace

double engine_bench_result::compute_ceiling_tokens_per_s(int prompt_tokens) const {
  const double peak = int8_gops > 0 ? int8_gops : peak_gflops;
  const double flop =
      prompt_tokens > 0 ? matmul_flop_per_token - classifier_flop + classifier_flop / prompt_tokens
                        : matmul_flop_per_token;
  return flop <= 0 ? 0.0 : peak * 1e9 / flop;
}

double engine_bench_result::roofline_tokens_per_s() const {
  return weight_bytes_per_token == 0
             ? 0.0
             : read_gbps * 1e9 / static_cast<double>(weight_bytes_per_token);
}

engine_bench_result run_engine_bench(const engine_bench_options& o) {
  // Stages: load, bandwidth, FMA peak, each prefill length, each decode batch.
  const double stages =
      3.0 + static_cast<double>(o.prefill_tokens.size() + o.decode_batches.size());
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
  res.rounds = std::max(1, o.rounds);
  res.weight_bytes_per_token = w.decode_bytes_per_token();
  report("measuring read bandwidth");
  res.read_bytes = o.bandwidth_bytes != 0 ? o.bandwidth_bytes : res.weight_bytes_per_token;
  res.read_gbps = measure_read_gbps(res.read_bytes, o.threads);
  report("measuring FMA peak");
  res.peak_gflops = measure_fma_gflops(o.threads);
  if (res.weight_types == "q8_0") res.int8_gops = measure_int8_gops(o.threads);
  res.matmul_flop_per_token = matmul_flop(w);
  res.classifier_flop =
      2.0 * static_cast<double>(w.classifier.rows) * static_cast<double>(w.classifier.cols);

  int batch_max = 1;
  for (int b : o.decode_batches) batch_max = std::max(batch_max, b);
  engine::runner run(w, engine::runner_options{o.threads, std::max(64, batch_max)});
  auto kc = engine::kv_cache_config::for_model(c, 0, c.n_layers, 0, o.kv_type);
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

  // -- prefill -----------------------------------------------------------------------------
  engine::seq_id next_id = 1;
  {
    // Warm-up: fault the mapped weights in so the first figure is not a disk read.
    auto id = next_id++;
    kv.seq_add(id);
    kv.seq_reserve(id, 8);
    run.prefill(kv, id, 0, random_tokens(8), logits);
    kv.seq_free(id);
  }
  const int rounds = std::max(1, o.rounds);
  // Best and mean of `rounds` timings of `tokens` tokens each.
  auto figure = [](int n, double tokens, const std::vector<double>& secs) {
    double best = secs.front(), total = 0;
    for (double x : secs) {
      best = std::min(best, x);
      total += x;
    }
    return engine_bench_figure{n, tokens / best, tokens * static_cast<double>(secs.size()) / total};
  };
  for (int n : o.prefill_tokens) {
    n = std::min(n, c.seq_len);
    report(fmt::format("prefill {} tokens", n));
    auto prompt = random_tokens(n);
    std::vector<double> secs;
    for (int round = 0; round < rounds; ++round) {
      auto id = next_id++;
      kv.seq_add(id);
      kv.seq_reserve(id, n);
      auto t0 = clock_type::now();
      run.prefill(kv, id, 0, prompt, logits);
      secs.push_back(seconds_since(t0));
      kv.seq_free(id);
    }
    res.prefill.push_back(figure(n, n, secs));
  }

  // -- decode ------------------------------------------------------------------------------
  const int ctx = std::min(o.context_tokens, c.seq_len - o.decode_steps - 1);
  for (int b : o.decode_batches) {
    report(fmt::format("decode {} sequences", b));
    std::vector<double> secs;
    for (int round = 0; round < rounds; ++round) {
      std::vector<engine::decode_item> items;
      for (int i = 0; i < b; ++i) {
        auto id = next_id++;
        kv.seq_add(id);
        kv.seq_reserve(id, ctx + o.decode_steps);
        run.prefill(kv, id, 0, random_tokens(ctx), logits);
        items.push_back({id, any_token(rng), ctx});
      }
      auto t0 = clock_type::now();
      for (int s = 0; s < o.decode_steps; ++s) {
        run.decode_batch(kv, items, logits);
        for (std::size_t i = 0; i < items.size(); ++i) {
          // greedy next token keeps the work realistic; positions advance together
          items[i].token = static_cast<int>(
              std::max_element(logits.begin() + static_cast<std::ptrdiff_t>(i) * c.vocab_size,
                               logits.begin() + static_cast<std::ptrdiff_t>(i + 1) * c.vocab_size) -
              (logits.begin() + static_cast<std::ptrdiff_t>(i) * c.vocab_size));
          ++items[i].pos;
        }
      }
      secs.push_back(seconds_since(t0));
      for (const auto& it : items) kv.seq_free(it.seq);
    }
    res.decode.push_back(figure(b, static_cast<double>(b) * o.decode_steps, secs));
  }
  res.model_file_bytes = static_cast<std::size_t>(std::filesystem::file_size(o.model));
  res.resident_bytes = resident_bytes();
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
  line(fmt::format("kv pool          {:.1f} MB preallocated (peak memory = the weights + this; "
                   "q8_0 matrices are held once, packed for the kernels)",
                   static_cast<double>(r.kv_pool_bytes) / 1e6));
  if (r.resident_bytes > 0)
    line(fmt::format("resident         {:.1f} MB at the end of the run (model file {:.1f} MB, KV "
                     "pool {:.1f} MB reserved: its blocks count once written)",
                     static_cast<double>(r.resident_bytes) / 1e6,
                     static_cast<double>(r.model_file_bytes) / 1e6,
                     static_cast<double>(r.kv_pool_bytes) / 1e6));
  line(fmt::format("read bandwidth   {:.2f} GB/s ({} threads, reading {:.1f} MB over and over: "
                   "a decode step's bytes, measured now)",
                   r.read_gbps, r.threads, static_cast<double>(r.read_bytes) / 1e6));
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
  double single = 0;
  for (const auto& d : r.decode)
    if (d.n == 1) single = d.tokens_per_s;
  line(fmt::format("rounds           {} per figure: the best is shown, (mean ...) over all of "
                   "them",
                   r.rounds));
  for (const auto& p : r.prefill) {
    const double own = r.compute_ceiling_tokens_per_s(p.n);
    line(fmt::format("prefill {:>4} tok {:>10.1f} tok/s (mean {:.1f}){}{}", p.n, p.tokens_per_s,
                     p.mean_tokens_per_s,
                     single > 0 ? fmt::format("   {:.1f}x single-seq decode (target >= 10x)",
                                              p.tokens_per_s / single)
                                : "",
                     own > 0 ? fmt::format(", {:.0f}% of its compute ceiling {:.1f} tok/s",
                                           100.0 * p.tokens_per_s / own, own)
                             : ""));
  }
  for (const auto& d : r.decode) {
    std::string extra;
    // A batch of n reads the weights once per step: its ceiling is the smaller of n x the
    // roofline and the compute ceiling.
    if (d.n == 1 && roof > 0)
      extra = fmt::format("   {:.0f}% of roofline (target >= 80%)", 100.0 * d.tokens_per_s / roof);
    else if (single > 0)
      extra = fmt::format("   {:.1f}x single-seq{}{}", d.tokens_per_s / single,
                          d.n == 32 ? " (target >= 8x)" : "",
                          roof > 0 && ceiling > 0
                              ? fmt::format(", {:.0f}% of its ceiling {:.1f} tok/s",
                                            100.0 * d.tokens_per_s / std::min(d.n * roof, ceiling),
                                            std::min(d.n * roof, ceiling))
                              : "");
    line(fmt::format("decode {:>3} seq  {:>10.1f} tok/s (mean {:.1f}){}", d.n, d.tokens_per_s,
                     d.mean_tokens_per_s, extra));
  }
  return out;
}

} // namespace duet::bench
