// The request actor's protocol under CAF's deterministic test scheduler: nothing runs until the
// test says so, timeouts fire in virtual time, and the controller and decode lane are scripted
// actors that answer exactly as the test needs (the real ones are covered end to end elsewhere).
#include "actors/errors.hpp"
#include "actors/fabric_context.hpp"
#include "actors/fabric_messages.hpp"
#include "actors/request_actor.hpp"
#include "tests/support/models.hpp"

#include <caf/all.hpp>
#include <caf/scheduler/test_coordinator.hpp>

#include <catch2/catch.hpp>

using namespace duet;
using namespace duet::actors;

namespace {

struct fixture {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  caf::scheduler::test_coordinator* sched = nullptr;
  std::shared_ptr<fabric_context> ctx;

  // what the scripted actors saw
  std::vector<integrated_job> jobs;
  std::vector<caf::actor> lanes;
  int placements = 0;
  bool lane_answers_open = true;

  // what the client saw
  std::vector<std::pair<int, int>> tokens; // (position, token)
  std::vector<completion_result> done;

  fixture() {
    cfg.set("scheduler.policy", caf::atom("testing"));
    cfg.set("logger.verbosity", caf::atom("quiet"));
    add_fabric_error_category(cfg);
    sys = std::make_unique<caf::actor_system>(cfg);
    sched = &dynamic_cast<caf::scheduler::test_coordinator&>(sys->scheduler());
    ctx = std::make_shared<fabric_context>(
        engine::open_model(test::model_file("stories260K.bin"), test::model_file("tok512.bin")),
        fault_config{});
    ctx->stop_tokens = {2, 1};
  }

  ~fixture() {
    for (auto& lane : lanes) caf::anon_send_exit(lane, caf::exit_reason::user_shutdown);
    sched->run();
  }

  caf::actor spawn_lane() {
    // (an argument, because CAF 0.17 dereferences a null tuple for argument-less lambdas)
    auto lane = sys->spawn(
        [this](caf::event_based_actor* self, int) -> caf::behavior {
          return {
              [this, self](open_seq&) -> caf::result<ok_atom> {
                if (lane_answers_open) return ok_atom::value;
                return self->make_response_promise<ok_atom>(); // never delivered
              },
              [this](integrated_job& job) { jobs.push_back(job); },
              [](release_atom, std::uint64_t) {},
              [](start_decode&) {},
          };
        },
        0);
    lanes.push_back(lane);
    return lane;
  }

  caf::actor spawn_controller() {
    return sys->spawn(
        [this](caf::event_based_actor*, int) -> caf::behavior {
          return {
              [this](place_atom, place_query&) -> placement_reply {
                ++placements;
                placement_reply r;
                r.disaggregated = false;
                r.decode_node = 0;
                r.lane = lanes.at(std::size_t(placements - 1));
                return r;
              },
              [](finished_atom, std::uint64_t) {},
          };
        },
        0);
  }

  caf::actor spawn_request(std::vector<int> prompt, int max_tokens, caf::actor controller,
                           std::int64_t deadline_ms = 60000) {
    completion_request req;
    req.request_id = "det";
    req.prompt_tokens = std::move(prompt);
    req.max_tokens = max_tokens;
    req.deadline_ms = deadline_ms;
    completion_callbacks cb;
    cb.on_token = [this](int pos, int tok) { tokens.emplace_back(pos, tok); };
    cb.on_done = [this](const completion_result& r) { done.push_back(r); };
    return spawn_request_actor(*sys, ctx, std::move(controller), 7, std::move(req), std::move(cb),
                               [] {});
  }
};

} // namespace

TEST_CASE("the request actor delivers each position once, in order, ignoring duplicates and "
          "stale epochs") {
  fixture f;
  f.spawn_lane();
  auto ctl = f.spawn_controller();
  auto req = f.spawn_request({1, 300, 301}, 3, ctl);
  f.sched->run();
  REQUIRE(f.jobs.size() == 1);
  CHECK(f.jobs[0].epoch == 1);
  CHECK(f.jobs[0].tokens == std::vector<int>{1, 300, 301});
  caf::anon_send(req, token_msg{7, 1, 3, 400, false});
  caf::anon_send(req, token_msg{7, 1, 3, 400, false}); // duplicate
  caf::anon_send(req, token_msg{7, 0, 4, 999, false}); // stale epoch
  caf::anon_send(req, token_msg{7, 1, 4, 401, false});
  caf::anon_send(req, token_msg{7, 1, 5, 402, false});
  f.sched->run();
  CHECK(f.tokens == std::vector<std::pair<int, int>>{{3, 400}, {4, 401}, {5, 402}});
  REQUIRE(f.done.size() == 1);
  CHECK(f.done[0].reason == finish_reason::length);
  CHECK(f.done[0].completion_tokens == 3);
  caf::anon_send_exit(ctl, caf::exit_reason::user_shutdown);
}

TEST_CASE("a stop token ends the request without being delivered") {
  fixture f;
  f.spawn_lane();
  auto ctl = f.spawn_controller();
  auto req = f.spawn_request({1, 300}, 10, ctl);
  f.sched->run();
  caf::anon_send(req, token_msg{7, 1, 2, 400, false});
  caf::anon_send(req, token_msg{7, 1, 3, 1, false}); // BOS ends a llama2.c story
  f.sched->run();
  CHECK(f.tokens == std::vector<std::pair<int, int>>{{2, 400}});
  REQUIRE(f.done.size() == 1);
  CHECK(f.done[0].reason == finish_reason::stop);
  caf::anon_send_exit(ctl, caf::exit_reason::user_shutdown);
}

TEST_CASE("a lane that never grants KV blocks fails the request as overloaded at its deadline, "
          "in virtual time") {
  fixture f;
  f.lane_answers_open = false;
  f.spawn_lane();
  auto ctl = f.spawn_controller();
  f.spawn_request({1, 300}, 4, ctl, 5000);
  f.sched->run();
  CHECK(f.done.empty()); // waiting, nothing has timed out yet
  f.sched->trigger_timeouts();
  f.sched->run();
  REQUIRE(f.done.size() == 1);
  CHECK(f.done[0].reason == finish_reason::error);
  CHECK(f.done[0].error == service_error::overloaded);
  caf::anon_send_exit(ctl, caf::exit_reason::user_shutdown);
}

TEST_CASE("a lane that dies makes the request re-place under a new epoch and resume at the next "
          "position with prompt plus delivered tokens") {
  fixture f;
  auto first = f.spawn_lane();
  f.spawn_lane();
  auto ctl = f.spawn_controller();
  auto req = f.spawn_request({1, 300}, 4, ctl);
  f.sched->run();
  caf::anon_send(req, token_msg{7, 1, 2, 400, false});
  caf::anon_send(req, token_msg{7, 1, 3, 401, false});
  f.sched->run();
  caf::anon_send_exit(first, caf::exit_reason::kill);
  f.sched->run();
  REQUIRE(f.placements == 2);
  REQUIRE(f.jobs.size() == 2);
  CHECK(f.jobs[1].epoch == 2);
  CHECK(f.jobs[1].tokens == std::vector<int>{1, 300, 400, 401}); // recompute input
  caf::anon_send(req, token_msg{7, 1, 4, 777, false});           // the dead lane's epoch: ignored
  caf::anon_send(req, token_msg{7, 2, 4, 402, false});
  caf::anon_send(req, token_msg{7, 2, 5, 403, false});
  f.sched->run();
  CHECK(f.tokens == std::vector<std::pair<int, int>>{{2, 400}, {3, 401}, {4, 402}, {5, 403}});
  REQUIRE(f.done.size() == 1);
  CHECK(f.done[0].reason == finish_reason::length);
  CHECK(f.done[0].restarts == 1);
  caf::anon_send_exit(ctl, caf::exit_reason::user_shutdown);
}
