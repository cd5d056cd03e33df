#include "bench/fabric_bench.hpp"

#include "actors/cluster.hpp"
#include "engine/tokenizer.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <tuple>
#include <utility>

namespace duet::bench {

namespace {

using clock_type = std::chrono::steady_clock;

double ms_since(clock_type::time_point t0, clock_type::time_point t1) {
  return std::chrono::duration<double, std::milli>(t1 - t0).count();
}

/// One request's timeline.
struct timeline {
  clock_type::time_point submitted;
  std::vector<clock_type::time_point> token_times;
  actors::completion_result result;
  bool done = false;
};

/// Submits one request and blocks (condition variable) until it ends.
timeline run_one(actors::cluster& c, const std::string& id, const std::vector<int>& prompt,
                 int max_tokens, actors::placement_mode mode) {
  std::mutex m;
  std::condition_variable cv;
  timeline t;
  actors::completion_request req;
  req.request_id = id;
  req.prompt_tokens = prompt;
  req.max_tokens = max_tokens;
  req.stop_at_eos = false; // every run produces exactly max_tokens: comparable timings
  req.placement = mode;
  actors::completion_callbacks cb;
  cb.on_token = [&](int, int) {
    auto now = clock_type::now();
    std::lock_guard g{m};
    t.token_times.push_back(now);
  };
  cb.on_done = [&](const actors::completion_result& r) {
    std::lock_guard g{m};
    t.result = r;
    t.done = true;
    cv.notify_all();
  };
  t.submitted = clock_type::now();
  c.submit(std::move(req), std::move(cb));
  std::unique_lock lock{m};
  cv.wait(lock, [&] { return t.done; });
  if (t.result.error != actors::service_error::none)
    throw std::runtime_error("bench request " + id + " failed: " + t.result.error_message);
  return t;
}

std::vector<int> make_prompt(const engine::tokenizer& tok, int n) {
  std::string text;
  std::vector<int> out;
  while (int(out.size()) < n) {
    text += "Once upon a time, there was a little girl named Lily. She loved to play outside. ";
    out = tok.encode(text, true);
  }
  out.resize(std::size_t(n));
  return out;
}

actors::cluster_config base_config(const fabric_bench_options& o) {
  actors::cluster_config cfg;
  cfg.model_path = o.model_path;
  cfg.tokenizer_path = o.tokenizer_path;
  cfg.transport = o.transport;
  cfg.prefill_nodes = std::max(1, o.prefill_split);
  cfg.prefill_split = o.prefill_split;
  cfg.prefill_chunk_tokens = o.chunk_tokens;
  cfg.engine_threads = o.threads;
  cfg.kv_dtype = o.kv_dtype;
  cfg.decode_sequences_max = 4;
  cfg.request_retries_max = 3;
  cfg.actor_restarts_max = o.recoveries + 2; // the bench kills lanes on purpose
  return cfg;
}

/// Counts finished requests for on_progress.
class progress_counter {
public:
  progress_counter(const fabric_bench_options& o)
      : o_(o), total_(2.0 * (o.requests + 1) + 2.0 * std::max(0, o.recoveries)) {}
  void step(std::string_view what) {
    if (o_.on_progress) o_.on_progress(std::min(1.0, done_++ / total_), what);
  }

private:
  const fabric_bench_options& o_;
  double total_;
  double done_ = 0;
};

/// Both modes on one cluster, one request of each in turn (which goes first alternates), so
/// drift of the machine (frequency, other load) falls on both alike instead of on whichever
/// mode ran second. Every request of either mode runs alone.
std::pair<fabric_mode_result, fabric_mode_result> run_modes(actors::cluster& c,
                                                            const std::vector<int>& prompt,
                                                            const fabric_bench_options& o,
                                                            progress_counter& progress) {
  using actors::placement_mode;
  fabric_mode_result integrated, disaggregated;
  integrated.mode = "integrated";
  disaggregated.mode = "disaggregated";
  std::vector<double> ttft[2], tpot[2];
  // One warm-up request each (first-touch of the KV pools and transport buffers).
  for (auto* r : {&integrated, &disaggregated}) {
    progress.step(r->mode);
    run_one(c, r->mode + "-warmup", prompt, o.max_tokens,
            r == &integrated ? placement_mode::integrated : placement_mode::disaggregated);
  }
  auto before = c.stats();
  for (int i = 0; i < o.requests; ++i) {
    for (int k = 0; k < 2; ++k) {
      const int m = (i + k) % 2; // 0: integrated, 1: disaggregated
      auto& r = m == 0 ? integrated : disaggregated;
      progress.step(r.mode);
      auto t = run_one(c, fmt::format("{}-{}", r.mode, i), prompt, o.max_tokens,
                       m == 0 ? placement_mode::integrated : placement_mode::disaggregated);
      ttft[m].push_back(ms_since(t.submitted, t.token_times.front()));
      for (std::size_t j = 1; j < t.token_times.size(); ++j)
        tpot[m].push_back(ms_since(t.token_times[j - 1], t.token_times[j]));
    }
  }
  auto after = c.stats(); // only the disaggregated requests moved KV
  double n = std::max(1, o.requests);
  integrated.ttft = summarize(ttft[0]);
  integrated.tpot = summarize(tpot[0]);
  disaggregated.ttft = summarize(ttft[1]);
  disaggregated.tpot = summarize(tpot[1]);
  disaggregated.kv_bytes_per_request = double(after.kv_bytes_sent - before.kv_bytes_sent) / n;
  disaggregated.kv_segments_per_request =
      double(after.kv_segments_sent - before.kv_segments_sent) / n;
  disaggregated.kv_send_ms_per_request = (after.kv_send_seconds - before.kv_send_seconds) * 1e3 / n;
  return {integrated, disaggregated};
}

} // namespace

latency_summary summarize(std::vector<double> samples_ms) {
  latency_summary s;
  s.samples = samples_ms.size();
  if (samples_ms.empty()) return s;
  std::sort(samples_ms.begin(), samples_ms.end());
  auto at = [&](double q) {
    auto idx = std::size_t(q * double(samples_ms.size() - 1) + 0.5);
    return samples_ms[std::min(idx, samples_ms.size() - 1)];
  };
  s.p50_ms = at(0.50);
  s.p99_ms = at(0.99);
  s.mean_ms = std::accumulate(samples_ms.begin(), samples_ms.end(), 0.0) / double(s.samples);
  return s;
}

fabric_bench_result run_fabric_bench(const fabric_bench_options& o) {
  fabric_bench_result result;
  progress_counter progress{o};
  {
    auto cluster = actors::make_embedded_cluster(base_config(o));
    auto prompt = make_prompt(cluster->tokenizer(), o.prompt_tokens);
    result.model = cluster->model_name();
    result.kv_type = cluster->kv_dtype();
    result.prompt_tokens = int(prompt.size());
    std::tie(result.integrated, result.disaggregated) = run_modes(*cluster, prompt, o, progress);
    auto& d = result.disaggregated;
    if (d.kv_send_ms_per_request > 0)
      result.transport_gbps = d.kv_bytes_per_request / (d.kv_send_ms_per_request * 1e6);
    double exposed = std::max(0.0, d.ttft.p50_ms - result.integrated.ttft.p50_ms);
    result.hidden_share = d.kv_send_ms_per_request > 0
                              ? std::clamp(1.0 - exposed / d.kv_send_ms_per_request, 0.0, 1.0)
                              : 0.0;
  }
  // Recovery: each request's decode lane is crashed after a few of its tokens.
  if (o.recoveries > 0) {
    auto cfg = base_config(o);
    auto cluster = actors::make_embedded_cluster(cfg);
    auto prompt = make_prompt(cluster->tokenizer(), o.prompt_tokens);
    int crash_after = std::max(2, o.max_tokens / 2);
    std::vector<double> gaps, recompute;
    std::int64_t lane_tokens = 0;
    for (int i = 0; i < o.recoveries; ++i) {
      // The lane counts tokens since its (re)start; a fresh lane after each crash.
      actors::fault_rule crash;
      crash.target = actors::actor_kind::decode_lane;
      crash.after_tokens = int(lane_tokens) + crash_after - 1;
      cluster->faults().add_rule(crash);
      progress.step("recovery from a killed decode lane");
      auto t = run_one(*cluster, fmt::format("recover-{}", i), prompt, o.max_tokens,
                       actors::placement_mode::disaggregated);
      if (t.result.restarts != 1)
        throw std::runtime_error(
            fmt::format("recovery run {} saw {} restarts, expected 1", i, t.result.restarts));
      // The crash follows the lane's crash_after-th step (first token came from prefill).
      std::size_t k = std::size_t(crash_after);
      if (k < t.token_times.size())
        gaps.push_back(ms_since(t.token_times[k - 1], t.token_times[k]));
      // The new lane decoded the rest of the request after re-placement (its first token came
      // from the prefill side again).
      lane_tokens = std::int64_t(o.max_tokens) - crash_after - 1;
      progress.step("recompute floor");
      auto base = run_one(
          *cluster, fmt::format("recompute-{}", i),
          [&] {
            auto p = prompt;
            p.resize(std::size_t(prompt.size()) + std::size_t(crash_after), prompt.back());
            return p;
          }(),
          1, actors::placement_mode::integrated);
      recompute.push_back(ms_since(base.submitted, base.token_times.front()));
    }
    result.recovery = summarize(gaps);
    if (o.on_progress) o.on_progress(1.0, "done");
    result.recompute = summarize(recompute);
  }
  return result;
}

} // namespace duet::bench
