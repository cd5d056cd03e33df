// Failure handling end to end (DESIGN.md, failure semantics): actors die mid-request, KV
// segments are lost or corrupted, and every request still ends with exactly the fault-free
// tokens, positions contiguous, all KV blocks back in their pools. Faults are deterministic
// rules of the seeded fault injector, so each run replays.
#include "tests/actors/fabric_support.hpp"

#include "engine/kv_dtype.hpp"
#include "engine/tokenizer.hpp"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <random>

using namespace duet;
using namespace duet::test;

namespace {

std::vector<int> prompt_of(actors::cluster& c, const char* text) {
  return c.tokenizer().encode(text, true);
}

} // namespace

TEST_CASE("a decode lane killed mid-generation is restarted and the request ends with the "
          "fault-free tokens, with f32 and with f16 K and V") {
  const auto kv = GENERATE(engine::kv_dtype_choice::f32, engine::kv_dtype_choice::f16);
  INFO("K and V " << engine::kv_dtype_choice_name(kv));
  auto cfg = stories_config();
  cfg.kv_dtype = kv;
  actors::fault_rule crash;
  crash.target = actors::actor_kind::decode_lane;
  crash.after_tokens = 7; // after the 7th decoded token, in the middle of a 40-token answer
  cfg.faults.rules.push_back(crash);
  auto cluster = actors::make_embedded_cluster(cfg);
  auto prompt = prompt_of(*cluster, "Once upon a time, there was a little dog");
  auto expected = reference_tokens(stories_model(), prompt, 40, cluster->kv_dtype());
  CHECK(cluster->kv_dtype() == engine::resolve_kv_dtype(kv, *stories_model().weights));
  collector col;
  cluster->submit(make_request("lane-crash", prompt, 40), col.callbacks());
  auto out = col.wait();
  check_fault_free(out, prompt, expected);
  CHECK(out.result.restarts == 1);
  CHECK(cluster->stats().actor_restarts == 1);
  CHECK(cluster->faults().fired() == 1);
  CHECK(settled_kv_blocks(*cluster) == 0);
}

TEST_CASE("a prefill shard killed mid-prefill is restarted, its chunks re-run, and the tokens "
          "are the fault-free ones") {
  auto cfg = stories_config();
  cfg.prefill_nodes = 2;
  cfg.prefill_split = 2;
  actors::fault_rule crash;
  crash.target = actors::actor_kind::prefill_shard;
  crash.node = 1;     // the second shard of the pipeline
  crash.at_chunk = 1; // as it starts the prompt's second chunk
  cfg.faults.rules.push_back(crash);
  auto cluster = actors::make_embedded_cluster(cfg);
  auto prompt = prompt_of(*cluster, "Once upon a time, there was a big red ball that liked to");
  REQUIRE(prompt.size() > std::size_t(cfg.prefill_chunk_tokens)); // at least two chunks
  auto expected = reference_tokens(prompt, 24);
  collector col;
  cluster->submit(make_request("shard-crash", prompt, 24), col.callbacks());
  auto out = col.wait();
  check_fault_free(out, prompt, expected);
  CHECK(out.result.restarts == 1);
  CHECK(cluster->faults().fired() == 1);
  CHECK(settled_kv_blocks(*cluster) == 0);
}

TEST_CASE("a whole-node crash rule on a decode lane crashes its node, and the request ends with "
          "the fault-free tokens") {
  // An embedded node runs one actor, so its crash is that actor's: restarted once. (A node
  // process with both roles runs a shard and a lane: tests/actors/multiprocess_test.cpp.)
  auto cfg = stories_config();
  actors::fault_rule crash;
  crash.target = actors::actor_kind::decode_lane;
  crash.after_tokens = 5;
  crash.whole_node = true;
  cfg.faults.rules.push_back(crash);
  auto cluster = actors::make_embedded_cluster(cfg);
  auto prompt = prompt_of(*cluster, "Once upon a time, there was a little dog");
  auto expected = reference_tokens(prompt, 24);
  collector col;
  cluster->submit(make_request("node-crash", prompt, 24), col.callbacks());
  auto out = col.wait();
  check_fault_free(out, prompt, expected);
  CHECK(out.result.restarts == 1);
  CHECK(cluster->faults().fired() == 1);
  CHECK(settled_kv_blocks(*cluster) == 0);
}

TEST_CASE("crash_node kills a decode node's lane mid-generation, and the request ends with the "
          "fault-free tokens") {
  auto cfg = stories_config();
  cfg.decode_step_delay_ms = 5; // room to crash mid-generation
  auto cluster = actors::make_embedded_cluster(cfg);
  int decode_node = -1;
  for (int i = 0; i < 500 && decode_node < 0; ++i) { // the controller spawns the lane
    for (const auto& n : cluster->actor_names())
      if (n.rfind("decode/", 0) == 0) decode_node = std::stoi(n.substr(7));
    if (decode_node < 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  REQUIRE(decode_node >= 0);
  CHECK(cluster->crash_node(decode_node + 100).empty()); // no such node: nothing killed
  auto prompt = prompt_of(*cluster, "Once upon a time, there was a little dog");
  auto expected = reference_tokens(prompt, 30);
  collector col;
  auto cb = col.callbacks();
  std::atomic<int> seen{0};
  std::vector<std::string> killed;
  std::mutex killed_mutex;
  auto on_token = cb.on_token;
  cb.on_token = [&](int position, int token) {
    on_token(position, token);
    if (++seen == 6) {
      auto k = cluster->crash_node(decode_node);
      std::lock_guard g{killed_mutex};
      killed = k;
    }
  };
  cluster->submit(make_request("crash-node", prompt, 30), std::move(cb));
  auto out = col.wait();
  check_fault_free(out, prompt, expected);
  {
    std::lock_guard g{killed_mutex};
    CHECK(killed == std::vector<std::string>{"decode/" + std::to_string(decode_node)});
  }
  CHECK(out.result.restarts >= 1);
  CHECK(settled_kv_blocks(*cluster) == 0);
}

TEST_CASE("a corrupted and a dropped KV segment are caught and the prefill re-run") {
  auto cfg = stories_config();
  cfg.kv_timeout_ms = 300;
  actors::fault_rule corrupt;
  corrupt.what = actors::fault_rule::action::corrupt_kv;
  corrupt.at_segment = 3;
  cfg.faults.rules.push_back(corrupt);
  auto cluster = actors::make_embedded_cluster(cfg);
  auto prompt = prompt_of(*cluster, "The sun was shining and the birds were singing in the");
  // Each run of the prefill sends one segment per chunk and layer; drop one of the re-run.
  int chunks = (int(prompt.size()) + cfg.prefill_chunk_tokens - 1) / cfg.prefill_chunk_tokens;
  actors::fault_rule drop;
  drop.what = actors::fault_rule::action::drop_kv;
  drop.at_segment = chunks * 5 + 2;
  cluster->faults().add_rule(drop);
  auto expected = reference_tokens(prompt, 16);
  collector col;
  cluster->submit(make_request("kv-faults", prompt, 16), col.callbacks());
  auto out = col.wait();
  check_fault_free(out, prompt, expected);
  CHECK(cluster->faults().fired() == 2);
  CHECK(cluster->stats().kv_segments_rejected >= 1);
  CHECK(cluster->stats().request_retries == 2);
  CHECK(settled_kv_blocks(*cluster) == 0);
}

TEST_CASE("a request whose decode lane keeps dying ends with a clear error after bounded "
          "retries") {
  auto cfg = stories_config();
  cfg.request_retries_max = 2;
  actors::fault_rule crash;
  crash.target = actors::actor_kind::decode_lane;
  crash.after_tokens = 1;
  crash.remaining = 100;
  cfg.faults.rules.push_back(crash);
  auto cluster = actors::make_embedded_cluster(cfg);
  auto prompt = prompt_of(*cluster, "Once upon a time");
  collector col;
  cluster->submit(make_request("doomed", prompt, 30), col.callbacks());
  auto out = col.wait();
  CHECK(out.result.reason == actors::finish_reason::error);
  CHECK(out.result.error == actors::service_error::internal);
  CHECK(out.result.error_message.find("retries_exhausted") != std::string::npos);
  CHECK(out.result.error_message.find("decode lane died") != std::string::npos);
  check_positions(out, int(prompt.size()));
  CHECK(settled_kv_blocks(*cluster) == 0);
}

TEST_CASE("a decode lane killed from outside with requests in flight loses none of them") {
  auto cfg = stories_config();
  auto cluster = actors::make_embedded_cluster(cfg);
  std::vector<std::vector<int>> prompts{prompt_of(*cluster, "Once upon a time"),
                                        prompt_of(*cluster, "Tom had a big red ball and he"),
                                        prompt_of(*cluster, "The cat sat on the")};
  std::vector<collector> cols(prompts.size());
  // The kill lands once the first request has a token out (the others are queued or running).
  std::mutex m;
  std::condition_variable cv;
  bool started = false;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    auto cb = cols[i].callbacks();
    auto inner = cb.on_token;
    cb.on_token = [&, inner](int pos, int tok) {
      inner(pos, tok);
      std::lock_guard g{m};
      started = true;
      cv.notify_all();
    };
    auto r = make_request("k" + std::to_string(i), prompts[i], 48);
    r.stop_at_eos = false;
    cluster->submit(r, cb);
  }
  {
    std::unique_lock lock{m};
    REQUIRE(cv.wait_for(lock, std::chrono::seconds(30), [&] { return started; }));
  }
  CHECK(cluster->kill_actor("decode/1"));
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    auto out = cols[i].wait();
    INFO(out.result.error_message);
    CHECK(out.result.error == actors::service_error::none);
    auto expected = reference_tokens(prompts[i], 48, false);
    CHECK(out.tokens == expected);
    CHECK(out.tokens.size() == 48);
    check_positions(out, int(prompts[i].size()));
  }
  CHECK(settled_kv_blocks(*cluster) == 0);
}

TEST_CASE("prefill shards restarted mid-stream over fabric+shm keep the fault-free tokens") {
  // Each restarted shard's senders close while the lanes' receivers, in the same process, may
  // still owe them credit: libfabric's shm reaches such a peer through its own memory, so this
  // crashed the process before fabric endpoints held their local peers (fabric_transport.cpp,
  // local_endpoints; duet chaos --transport fabric+shm --kill-prefill 6 --kill-decode 0). It
  // crashed in 2 of 5 runs then; tests/transport/fabric_lifetime_test.cpp hits the case every
  // time.
  auto cfg = stories_config();
  cfg.transport = "fabric+shm";
  cfg.prefill_nodes = 2;
  cfg.decode_nodes = 2;
  cfg.kv_timeout_ms = 500;
  cfg.request_retries_max = 8;
  for (int i = 0; i < 6; ++i) {
    actors::fault_rule crash;
    crash.target = actors::actor_kind::prefill_shard;
    crash.node = i % 2;
    crash.at_chunk = (i / 2) % 2;
    cfg.faults.rules.push_back(crash);
  }
  auto cluster = actors::make_embedded_cluster(cfg);
  const std::vector<std::string> openings{"Once upon a time", "The little dog was",
                                          "Lily and Tom went to the park and saw a",
                                          "One day, a big bird", "The sun was hot and"};
  std::vector<std::vector<int>> prompts;
  for (int i = 0; i < 24; ++i) prompts.push_back(prompt_of(*cluster, openings[i % 5].c_str()));
  std::vector<collector> cols(prompts.size());
  for (std::size_t i = 0; i < prompts.size(); ++i)
    cluster->submit(make_request("shm" + std::to_string(i), prompts[i], 24), cols[i].callbacks());
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    auto out = cols[i].wait();
    INFO("request " << i << ": " << out.result.error_message);
    check_fault_free(out, prompts[i], reference_tokens(prompts[i], 24));
  }
  CHECK(cluster->faults().fired() == 6);
  CHECK(settled_kv_blocks(*cluster) == 0);
}
