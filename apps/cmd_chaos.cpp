// `duet chaos`: a seeded fault-injection run against an embedded cluster. It serves a workload
// once without faults, then again with decode lanes and prefill shards crashed at seeded
// points and KV segments dropped / delayed / corrupted with seeded probabilities, and checks
// the contracts of DESIGN.md: every request answered exactly once, the same tokens as the
// fault-free run, positions contiguous, every KV block back in its pool. Exit status 1 when a
// contract is broken. The same seed replays the same faults.
#include "actors/cluster.hpp"
#include "apps/command.hpp"
#include "engine/kv_dtype.hpp"
#include "engine/tokenizer.hpp"

#include <fmt/core.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <random>
#include <thread>

namespace duet::apps {

namespace {

struct chaos_options {
  std::string model;
  std::string tokenizer;
  std::string transport = "inproc";
  std::uint64_t seed = 1;
  int requests = 32;
  int max_tokens = 48;
  int prefill = 2;
  int decode = 2;
  int split = 1;
  int kill_decode = 2;
  int kill_prefill = 2;
  double kv_drop = 0.01;
  double kv_corrupt = 0.01;
  double kv_delay = 0.02;
  int kv_delay_ms = 5;
  std::string kv_dtype = "auto";
};

struct answer {
  std::vector<int> tokens;
  std::vector<int> positions;
  actors::completion_result result;
  int done_calls = 0;
};

/// Serves all prompts concurrently and waits for every end.
std::vector<answer> serve(actors::cluster& c, const std::vector<std::vector<int>>& prompts,
                          int max_tokens) {
  std::mutex m;
  std::condition_variable cv;
  std::vector<answer> out(prompts.size());
  std::size_t done = 0;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    actors::completion_request req;
    req.request_id = fmt::format("chaos-{}", i);
    req.prompt_tokens = prompts[i];
    req.max_tokens = max_tokens;
    actors::completion_callbacks cb;
    cb.on_token = [&, i](int pos, int tok) {
      std::lock_guard g{m};
      out[i].positions.push_back(pos);
      out[i].tokens.push_back(tok);
    };
    cb.on_done = [&, i](const actors::completion_result& r) {
      std::lock_guard g{m};
      out[i].result = r;
      if (++out[i].done_calls == 1) ++done;
      cv.notify_all();
    };
    c.submit(std::move(req), std::move(cb));
  }
  std::unique_lock lock{m};
  cv.wait(lock, [&] { return done == prompts.size(); });
  return out;
}

void setup_chaos(CLI::App& app) {
  auto o = std::make_shared<chaos_options>();
  o->model = default_models_dir() + "/stories260K.bin";
  o->tokenizer = default_models_dir() + "/tok512.bin";
  auto* cmd = app.add_subcommand(
      "chaos", "Seeded fault injection against an embedded cluster; checks the contracts");
  cmd->add_option("--model,-m", o->model, "Model file")->capture_default_str();
  cmd->add_option("--tokenizer,-z", o->tokenizer, "llama2.c tokenizer")->capture_default_str();
  cmd->add_option("--transport", o->transport, "KV transport")->capture_default_str();
  cmd->add_option("--seed", o->seed, "Seed of every fault (replays a run)")->capture_default_str();
  cmd->add_option("--requests", o->requests, "Concurrent requests")->capture_default_str();
  cmd->add_option("--max-tokens", o->max_tokens, "Tokens per request")->capture_default_str();
  cmd->add_option("--prefill", o->prefill, "Prefill nodes")->capture_default_str();
  cmd->add_option("--decode", o->decode, "Decode nodes")->capture_default_str();
  cmd->add_option("--split", o->split, "Prefill shards per pipeline")->capture_default_str();
  cmd->add_option("--kill-decode", o->kill_decode, "Decode lane crashes")->capture_default_str();
  cmd->add_option("--kill-prefill", o->kill_prefill, "Prefill shard crashes")
      ->capture_default_str();
  cmd->add_option("--kv-drop", o->kv_drop, "Probability a KV segment is lost")
      ->capture_default_str();
  cmd->add_option("--kv-corrupt", o->kv_corrupt, "Probability a KV segment is corrupted")
      ->capture_default_str();
  cmd->add_option("--kv-delay", o->kv_delay, "Probability a KV segment is delayed")
      ->capture_default_str();
  cmd->add_option("--kv-delay-ms", o->kv_delay_ms, "Delay of a delayed segment")
      ->capture_default_str();
  add_kv_dtype_option(cmd, o->kv_dtype);
  cmd->callback([o] {
    actors::cluster_config cfg;
    cfg.model_path = o->model;
    cfg.tokenizer_path = o->tokenizer;
    cfg.transport = o->transport;
    cfg.prefill_nodes = o->prefill;
    cfg.decode_nodes = o->decode;
    cfg.prefill_split = o->split;
    cfg.kv_dtype = engine::parse_kv_dtype(o->kv_dtype);
    cfg.prefill_chunk_tokens = 8;
    cfg.kv_timeout_ms = 500;
    cfg.request_retries_max = 8;
    cfg.placement = actors::placement_mode::disaggregated;

    std::mt19937_64 rng{o->seed};
    std::vector<std::vector<int>> prompts;
    std::vector<std::vector<int>> reference;
    const std::vector<std::string> openings{"Once upon a time", "The little dog was",
                                            "Lily and Tom went to the park and saw a",
                                            "One day, a big bird", "The sun was hot and"};
    {
      auto clean = actors::make_embedded_cluster(cfg);
      for (int i = 0; i < o->requests; ++i)
        prompts.push_back(clean->tokenizer().encode(openings[rng() % openings.size()], true));
      for (auto& a : serve(*clean, prompts, o->max_tokens)) {
        if (a.result.error != actors::service_error::none)
          throw std::runtime_error("fault-free run failed: " + a.result.error_message);
        reference.push_back(a.tokens);
      }
    }
    cfg.faults.seed = o->seed;
    cfg.faults.chaos = {o->kv_drop, o->kv_corrupt, o->kv_delay, o->kv_delay_ms};
    int tokens_per_lane = std::max(1, o->requests * o->max_tokens / std::max(1, o->decode));
    for (int i = 0; i < o->kill_decode; ++i) {
      actors::fault_rule r;
      r.target = actors::actor_kind::decode_lane;
      r.after_tokens = 1 + int(rng() % std::uint64_t(tokens_per_lane / 2 + 1));
      fmt::print("fault: crash a decode lane after {} tokens\n", r.after_tokens);
      cfg.faults.rules.push_back(r);
    }
    for (int i = 0; i < o->kill_prefill; ++i) {
      actors::fault_rule r;
      r.target = actors::actor_kind::prefill_shard;
      r.node = int(rng() % std::uint64_t(std::max(1, o->prefill)));
      r.at_chunk = int(rng() % 2);
      fmt::print("fault: crash prefill node {}'s shard at chunk {}\n", r.node, r.at_chunk);
      cfg.faults.rules.push_back(r);
    }
    auto chaotic = actors::make_embedded_cluster(cfg);
    auto t0 = std::chrono::steady_clock::now();
    auto answers = serve(*chaotic, prompts, o->max_tokens);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    int wrong = 0, failed = 0;
    for (std::size_t i = 0; i < answers.size(); ++i) {
      const auto& a = answers[i];
      bool contiguous = true;
      for (std::size_t k = 0; k < a.positions.size(); ++k)
        contiguous &= a.positions[k] == int(prompts[i].size() + k);
      if (a.result.error != actors::service_error::none) {
        ++failed;
        fmt::print("request {}: failed with a clear error: {}\n", i, a.result.error_message);
        if (!contiguous) ++wrong;
        continue;
      }
      if (a.tokens != reference[i] || !contiguous || a.done_calls != 1) {
        ++wrong;
        fmt::print("request {}: CONTRACT BROKEN (tokens equal: {}, positions contiguous: {})\n", i,
                   a.tokens == reference[i], contiguous);
      }
    }
    std::size_t blocks = chaotic->kv_blocks_in_use();
    for (int i = 0; i < 100 && blocks != 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      blocks = chaotic->kv_blocks_in_use();
    }
    auto s = chaotic->stats();
    fmt::print("seed {}: {} requests in {:.2f} s; {} faults fired; {} actor restarts; {} request "
               "retries; {} KV segments rejected on arrival\n",
               o->seed, answers.size(), seconds, chaotic->faults().fired(), s.actor_restarts,
               s.request_retries, s.kv_segments_rejected);
    fmt::print("{} with the fault-free tokens, {} ended with a clear error, {} broke a contract; "
               "KV blocks still held: {}\n",
               int(answers.size()) - wrong - failed, failed, wrong, blocks);
    if (wrong > 0 || blocks != 0) throw CLI::RuntimeError(1);
  });
}

const register_command reg{&setup_chaos};

} // namespace
} // namespace duet::apps
