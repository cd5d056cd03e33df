// Many requests at once, bounded admission, cancellation and bad input.
#include "tests/actors/fabric_support.hpp"

#include "engine/tokenizer.hpp"
#include "tests/support/seed.hpp"

#include <array>
#include <atomic>
#include <limits>
#include <random>

using namespace duet;
using namespace duet::test;

TEST_CASE("64 concurrent requests with mixed prompt and output lengths all complete with their "
          "solo-run tokens") {
  const std::uint64_t seed = test_seed_or(20260127);
  INFO("seed " << seed << " (set DUET_TEST_SEED to replay)");
  std::mt19937_64 rng{seed};
  auto cfg = stories_config();
  cfg.prefill_nodes = 2;
  cfg.decode_nodes = 2;
  cfg.policy.integrated_prompt_tokens_max = 12; // a mix of integrated and disaggregated
  auto cluster = actors::make_embedded_cluster(cfg);
  const std::vector<std::string> openings{
      "Once upon a time",
      "The little dog",
      "Lily and Tom went to the park and saw a",
      "One day, a big bird",
      "There was a girl who loved to sing and dance all day",
      "The sun",
      "Sam had a red ball. He liked to throw it high in the sky. One day"};
  constexpr int n = 64;
  std::vector<std::vector<int>> prompts(n);
  std::vector<int> max_tokens(n);
  std::vector<collector> cols(n);
  for (int i = 0; i < n; ++i) {
    prompts[i] = cluster->tokenizer().encode(openings[rng() % openings.size()], true);
    max_tokens[i] = 1 + int(rng() % 60);
  }
  for (int i = 0; i < n; ++i)
    cluster->submit(make_request("c" + std::to_string(i), prompts[i], max_tokens[i],
                                 actors::placement_mode::automatic),
                    cols[i].callbacks());
  for (int i = 0; i < n; ++i) {
    auto out = cols[i].wait();
    INFO("request " << i << ": " << out.result.error_message);
    CHECK(out.result.error == actors::service_error::none);
    CHECK(out.tokens == reference_tokens(prompts[i], max_tokens[i]));
    check_positions(out, int(prompts[i].size()));
  }
  auto stats = cluster->stats();
  CHECK(stats.integrated > 0);
  CHECK(stats.disaggregated > 0);
  CHECK(stats.requests_finished == std::uint64_t(n));
  CHECK(settled_kv_blocks(*cluster) == 0);
}

TEST_CASE("a decode lane with more running sequences than its batch steps them in turn, so "
          "none waits for the others to finish") {
  // 4 sequences, batches of 2, each step slowed to 20 ms: in turn, every sequence gets its first
  // lane token within a couple of steps; without rotation the last two would get none until the
  // first two had all 24 of theirs (an ordering of events, not a time bound).
  auto cfg = stories_config();
  cfg.decode_batch_max = 2;
  cfg.decode_step_delay_ms = 20;
  auto cluster = actors::make_embedded_cluster(cfg);
  constexpr int n = 4, max_tokens = 24;
  std::atomic<int> events{0};
  std::array<std::atomic<int>, n> first_lane_token{}, done_at{};
  std::vector<collector> cols(n);
  auto prompt = cluster->tokenizer().encode("Once upon a time", true);
  for (int i = 0; i < n; ++i) {
    auto cb = cols[std::size_t(i)].callbacks();
    auto on_token = cb.on_token;
    cb.on_token = [&, i, on_token, count = 0](int position, int token) mutable {
      if (++count == 2) first_lane_token[std::size_t(i)] = ++events; // the 1st is the prefill's
      on_token(position, token);
    };
    auto on_done = cb.on_done;
    cb.on_done = [&, i, on_done](const actors::completion_result& r) {
      done_at[std::size_t(i)] = ++events;
      on_done(r);
    };
    auto rq = make_request("rr" + std::to_string(i), prompt, max_tokens);
    rq.stop_at_eos = false; // all run the full 24 tokens
    cluster->submit(std::move(rq), std::move(cb));
  }
  int last_first_token = 0, first_done = std::numeric_limits<int>::max();
  const auto expected = reference_tokens(prompt, max_tokens, false);
  for (int i = 0; i < n; ++i) {
    auto out = cols[std::size_t(i)].wait();
    INFO("request " << i);
    check_fault_free(out, prompt, expected);
    last_first_token = std::max(last_first_token, first_lane_token[std::size_t(i)].load());
    first_done = std::min(first_done, done_at[std::size_t(i)].load());
  }
  CHECK(last_first_token > 0);
  CHECK(last_first_token < first_done);
  CHECK(settled_kv_blocks(*cluster) == 0);
}

TEST_CASE("a full KV pool makes a request wait until its deadline, then refuses it as "
          "overloaded, and refuses at once past the waiting bound") {
  auto cfg = stories_config();
  cfg.decode_sequences_max = 1; // one full-context sequence: 32 blocks of 16 positions
  cfg.admission_waiters_max = 1;
  actors::fault_rule slow;
  slow.what = actors::fault_rule::action::delay_kv;
  slow.at_segment = 0; // holds the first request's prefill (and its blocks) for a while
  slow.delay_ms = 1500;
  cfg.faults.rules.push_back(slow);
  auto cluster = actors::make_embedded_cluster(cfg);
  auto prompt = cluster->tokenizer().encode("Once upon a time", true);

  collector a, b, c;
  auto ra = make_request("a", prompt, 400);
  ra.stop_at_eos = false;
  cluster->submit(ra, a.callbacks());
  for (int i = 0; i < 200 && cluster->kv_blocks_in_use() == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  REQUIRE(cluster->kv_blocks_in_use() > 0);
  auto rb = make_request("b", prompt, 400);
  rb.deadline_ms = 400;
  cluster->submit(rb, b.callbacks());
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  cluster->submit(make_request("c", prompt, 400), c.callbacks());

  auto out_c = c.wait();
  INFO("c: " << out_c.result.error_message);
  CHECK(out_c.result.error == actors::service_error::overloaded);
  CHECK(out_c.result.error_message.find("already wait") != std::string::npos);
  auto out_b = b.wait();
  INFO("b: " << out_b.result.error_message);
  CHECK(out_b.result.error == actors::service_error::overloaded);
  CHECK(out_b.result.error_message.find("within the deadline") != std::string::npos);
  auto out_a = a.wait();
  INFO(out_a.result.error_message);
  CHECK(out_a.result.error == actors::service_error::none);
  CHECK(out_a.tokens.size() == 400);
  check_positions(out_a, int(prompt.size()));
  CHECK(settled_kv_blocks(*cluster) == 0);
}

TEST_CASE("a cancelled request ends once as cancelled and frees its KV") {
  auto cfg = stories_config();
  auto cluster = actors::make_embedded_cluster(cfg);
  auto prompt = cluster->tokenizer().encode("Once upon a time", true);
  std::mutex m;
  std::condition_variable cv;
  int seen = 0;
  collector col;
  auto cb = col.callbacks();
  auto inner = cb.on_token;
  cb.on_token = [&, inner](int pos, int tok) {
    inner(pos, tok);
    std::lock_guard g{m};
    ++seen;
    cv.notify_all();
  };
  auto r = make_request("cancel-me", prompt, 480);
  r.stop_at_eos = false;
  cluster->submit(r, cb);
  {
    std::unique_lock lock{m};
    REQUIRE(cv.wait_for(lock, std::chrono::seconds(30), [&] { return seen > 0; }));
  }
  cluster->cancel("cancel-me");
  auto out = col.wait();
  CHECK(out.result.reason == actors::finish_reason::cancelled);
  check_positions(out, int(prompt.size()));
  CHECK(settled_kv_blocks(*cluster) == 0);
}

TEST_CASE("bad requests are refused with a clear error and leave nothing behind") {
  auto cfg = stories_config();
  auto cluster = actors::make_embedded_cluster(cfg);
  collector too_long, bad_token, no_tokens, empty;
  std::vector<int> prompt(500, 300);
  prompt[0] = 1;
  cluster->submit(make_request("long", prompt, 100), too_long.callbacks());
  cluster->submit(make_request("tok", {1, 9999}, 4), bad_token.callbacks());
  cluster->submit(make_request("zero", {1, 300}, 0), no_tokens.callbacks());
  cluster->submit(make_request("empty", {}, 4), empty.callbacks());
  auto a = too_long.wait();
  CHECK(a.result.error == actors::service_error::prompt_too_long);
  CHECK(a.result.error_message.find("exceeds the context of 512") != std::string::npos);
  auto b = bad_token.wait();
  CHECK(b.result.error == actors::service_error::bad_request);
  CHECK(b.result.error_message.find("9999 at index 1") != std::string::npos);
  CHECK(no_tokens.wait().result.error == actors::service_error::bad_request);
  CHECK(empty.wait().result.error == actors::service_error::bad_request);
  CHECK(cluster->kv_blocks_in_use() == 0);
  CHECK(cluster->context_length() == 512);
  CHECK(cluster->model_name() == "stories260K");
}
