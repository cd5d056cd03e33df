#include "actors/request_actor.hpp"

#include "actors/errors.hpp"
#include "actors/fabric_messages.hpp"

#include <caf/all.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <chrono>

namespace duet::actors {

namespace {

using clock_type = std::chrono::steady_clock;

/// How soon a request places again when the controller says a lane or shard it needs is being
/// restarted (bounded by the request's deadline).
constexpr std::chrono::milliseconds placement_retry_interval{20};

struct request_state {
  std::shared_ptr<fabric_context> ctx;
  caf::actor controller;
  std::uint64_t id = 0;
  completion_request req;
  completion_callbacks callbacks;
  std::function<void()> on_exit;
  clock_type::time_point deadline;

  std::uint32_t epoch = 0;
  placement_reply placement;
  bool first_token_seen = false; ///< in the current epoch (prefill side no longer needed)
  std::vector<int> emitted;      ///< tokens delivered to the client, positions prompt + i
  int retries = 0;
  int restarts = 0;
  bool finished = false;
  int last_failed_node = -1;
  caf::actor_addr dead; ///< the actor whose death caused the current retry

  static inline const char* name = "request";

  int prompt_len() const { return int(req.prompt_tokens.size()); }
  int next_position() const { return prompt_len() + int(emitted.size()); }
  int last_position() const { return prompt_len() + req.max_tokens - 1; }
};

using request_actor = caf::stateful_actor<request_state>;

void place(request_actor* self);

void release_current(request_actor* self) {
  auto& st = self->state;
  if (st.placement.lane) {
    self->send(st.placement.lane, release_atom::value, st.id);
    self->demonitor(st.placement.lane);
  }
  for (auto& shard : st.placement.shards) {
    self->send(shard, release_atom::value, st.id);
    self->demonitor(shard);
  }
  st.placement = placement_reply{};
}

void finish(request_actor* self, finish_reason reason, caf::error err = caf::none) {
  auto& st = self->state;
  if (st.finished) return;
  st.finished = true;
  bool disaggregated = st.placement.disaggregated;
  release_current(self);
  self->send(st.controller, finished_atom::value, st.id);
  completion_result result;
  result.reason = reason;
  if (err) {
    auto code = fabric_code(err);
    result.error = code == fabric_errc::none ? service_error::internal : to_service_error(code);
    result.error_message = fmt::format("request {}: {}", st.req.request_id, describe(err));
  }
  result.prompt_tokens = st.prompt_len();
  result.completion_tokens = int(st.emitted.size());
  result.disaggregated = disaggregated;
  result.restarts = st.restarts;
  st.ctx->counters.requests_finished.fetch_add(1, std::memory_order_relaxed);
  if (st.callbacks.on_done) st.callbacks.on_done(result);
  if (st.on_exit) st.on_exit();
  self->quit();
}

/// Something under the current epoch failed: re-place and re-run, boundedly.
void handle_failure(request_actor* self, caf::error err, bool actor_died,
                    caf::actor_addr dead = {}) {
  auto& st = self->state;
  if (st.finished) return;
  st.dead = std::move(dead);
  if (actor_died) ++st.restarts;
  st.last_failed_node = st.placement.decode_node;
  if (++st.retries > st.ctx->config.request_retries_max) {
    finish(self, finish_reason::error,
           make_error(fabric_errc::retries_exhausted,
                      fmt::format("gave up after {} retries; last failure: {}",
                                  st.ctx->config.request_retries_max, describe(err))));
    return;
  }
  st.ctx->counters.request_retries.fetch_add(1, std::memory_order_relaxed);
  bool keep_disaggregated = st.placement.disaggregated;
  release_current(self);
  st.placement.disaggregated = keep_disaggregated;
  // Overload clears by waiting; crashes and lost KV are retried at once (the supervisor has
  // already restarted the actor by the time its down message reached us).
  if (fabric_code(err) == fabric_errc::overloaded) {
    self->delayed_send(self, std::chrono::milliseconds(10 * st.retries), retry_atom::value,
                       st.epoch);
  } else {
    place(self);
  }
}

void start_prefill(request_actor* self) {
  auto& st = self->state;
  std::vector<int> tokens = st.req.prompt_tokens;
  tokens.insert(tokens.end(), st.emitted.begin(), st.emitted.end());
  if (st.placement.disaggregated) {
    prefill_job job;
    job.route.request = st.id;
    job.route.epoch = st.epoch;
    job.route.total_tokens = int(tokens.size());
    job.route.sampling = st.req.sampling;
    job.route.request_actor = self;
    job.route.shards = st.placement.shards;
    job.route.lane = st.placement.lane;
    job.route.kv_address = st.placement.kv_address;
    job.tokens = std::move(tokens);
    job.chunk_tokens = st.ctx->config.prefill_chunk_tokens;
    self->send(st.placement.shards.front(), std::move(job));
  } else {
    self->send(st.placement.lane, integrated_job{st.id, st.epoch, std::move(tokens),
                                                 st.ctx->config.prefill_chunk_tokens});
  }
}

void place(request_actor* self) {
  auto& st = self->state;
  ++st.epoch;
  st.first_token_seen = false;
  auto epoch = st.epoch;
  place_query q;
  q.request = st.id;
  q.prompt_tokens = st.next_position();
  q.max_tokens = st.req.max_tokens - int(st.emitted.size());
  q.mode = static_cast<std::uint8_t>(st.req.placement);
  q.avoid_decode_node = st.last_failed_node;
  q.dead = st.dead;
  q.epoch = epoch;
  self->request(st.controller, caf::infinite, place_atom::value, q)
      .then(
          [=](placement_reply& reply) {
            auto& s = self->state;
            if (s.finished || s.epoch != epoch) return;
            s.placement = std::move(reply);
            self->monitor(s.placement.lane);
            for (auto& shard : s.placement.shards) self->monitor(shard);
            open_seq open;
            open.request = s.id;
            open.epoch = epoch;
            open.reserve_tokens = s.prompt_len() + s.req.max_tokens;
            open.last_pos = s.last_position();
            if (s.req.stop_at_eos) open.stop_tokens = s.ctx->stop_tokens;
            open.sampling = s.req.sampling;
            open.request_actor = self;
            auto left = s.deadline - clock_type::now();
            auto wait = std::max(std::chrono::milliseconds(1),
                                 std::chrono::duration_cast<std::chrono::milliseconds>(left));
            self->request(s.placement.lane, wait, open)
                .then(
                    [=](ok_atom) {
                      auto& s2 = self->state;
                      if (s2.finished || s2.epoch != epoch) return;
                      start_prefill(self);
                    },
                    [=](caf::error& err) {
                      auto& s2 = self->state;
                      if (s2.finished || s2.epoch != epoch) return;
                      if (err == caf::sec::request_timeout) {
                        finish(
                            self, finish_reason::error,
                            make_error(fabric_errc::overloaded,
                                       fmt::format("no KV blocks on decode node {} within "
                                                   "the deadline of {} ms",
                                                   s2.placement.decode_node, s2.req.deadline_ms)));
                        return;
                      }
                      auto code = fabric_code(err);
                      if (code == fabric_errc::overloaded || code == fabric_errc::no_capacity) {
                        finish(self, finish_reason::error, std::move(err));
                        return;
                      }
                      handle_failure(self, std::move(err), false);
                    });
          },
          [=](caf::error& err) {
            auto& s = self->state;
            if (s.finished || s.epoch != epoch) return;
            // A lane or shard is restarting (controller: overloaded): place again shortly, as
            // long as the deadline allows (its timer ends the request otherwise).
            if (fabric_code(err) == fabric_errc::overloaded) {
              self->delayed_send(self, placement_retry_interval, retry_atom::value, epoch);
              return;
            }
            finish(self, finish_reason::error, std::move(err));
          });
}

caf::behavior request_impl(request_actor* self, std::shared_ptr<fabric_context> ctx,
                           caf::actor controller, std::uint64_t id, completion_request req,
                           completion_callbacks callbacks, std::function<void()> on_exit) {
  auto& st = self->state;
  st.ctx = std::move(ctx);
  st.controller = std::move(controller);
  st.id = id;
  st.req = std::move(req);
  st.callbacks = std::move(callbacks);
  st.on_exit = std::move(on_exit);
  st.deadline =
      clock_type::now() + std::chrono::milliseconds(std::max<std::int64_t>(1, st.req.deadline_ms));
  st.ctx->counters.requests_started.fetch_add(1, std::memory_order_relaxed);

  const auto& cfg = st.ctx->model.weights->config;
  auto bad = [&](fabric_errc code, std::string text) {
    finish(self, finish_reason::error, make_error(code, std::move(text)));
    return caf::behavior{};
  };
  if (st.req.prompt_tokens.empty()) return bad(fabric_errc::bad_request, "empty prompt");
  if (st.req.max_tokens < 1)
    return bad(fabric_errc::bad_request,
               fmt::format("max_tokens must be >= 1, got {}", st.req.max_tokens));
  for (std::size_t i = 0; i < st.req.prompt_tokens.size(); ++i) {
    int t = st.req.prompt_tokens[i];
    if (t < 0 || t >= cfg.vocab_size)
      return bad(fabric_errc::bad_request,
                 fmt::format("prompt token {} at index {} is outside the vocabulary [0, {})", t, i,
                             cfg.vocab_size));
  }
  if (st.prompt_len() + st.req.max_tokens > cfg.seq_len)
    return bad(fabric_errc::prompt_too_long,
               fmt::format("prompt of {} tokens + max_tokens {} exceeds the context of {}",
                           st.prompt_len(), st.req.max_tokens, cfg.seq_len));

  self->set_down_handler([=](caf::down_msg& dm) {
    auto& s = self->state;
    if (s.finished) return;
    bool lane = s.placement.lane && s.placement.lane.address() == dm.source;
    bool shard = std::any_of(s.placement.shards.begin(), s.placement.shards.end(),
                             [&](const caf::actor& a) { return a.address() == dm.source; });
    // A shard that dies after our first token no longer matters to this request.
    if (lane || (shard && !s.first_token_seen))
      handle_failure(self,
                     make_error(fabric_errc::actor_crashed,
                                fmt::format("{} died: {}", lane ? "decode lane" : "prefill shard",
                                            describe(dm.reason))),
                     true, dm.source);
  });
  self->delayed_send(self, st.deadline - clock_type::now(), deadline_atom::value);
  place(self);
  return {
      [=](token_msg& msg) {
        auto& s = self->state;
        if (s.finished || msg.epoch != s.epoch || msg.request != s.id) return;
        if (msg.position < s.next_position()) return; // already delivered (resumed request)
        if (msg.position > s.next_position()) {
          handle_failure(self,
                         make_error(fabric_errc::protocol,
                                    fmt::format("token at position {} while {} was expected",
                                                msg.position, s.next_position())),
                         false);
          return;
        }
        if (msg.from_prefill || !s.placement.disaggregated) s.first_token_seen = true;
        if (s.req.stop_at_eos && std::find(s.ctx->stop_tokens.begin(), s.ctx->stop_tokens.end(),
                                           msg.token) != s.ctx->stop_tokens.end()) {
          finish(self, finish_reason::stop);
          return;
        }
        // The client gets the token before the decode lane is told to start: sending
        // start_decode first woke the lane's thread, which on the 2 shared cores preempted this
        // one for its first decode steps, so the first token reached the client 5-6 ms after it
        // reached this actor (timestamps of duet bench fabric, zmq+tcp, with one compiler busy).
        s.emitted.push_back(msg.token);
        if (s.callbacks.on_token) s.callbacks.on_token(msg.position, msg.token);
        if (int(s.emitted.size()) >= s.req.max_tokens) {
          finish(self, finish_reason::length);
          return;
        }
        // A first token that ends the request (stop token, max_tokens 1) starts no decoding.
        if (msg.from_prefill && s.placement.disaggregated)
          self->send(s.placement.lane, start_decode{s.id, s.epoch, msg.position, msg.token});
      },
      [=](work_failed& msg) {
        auto& s = self->state;
        if (s.finished || msg.epoch != s.epoch) return;
        // A dead node's actors (reported by the controller, which may beat their own down
        // messages here) count as a restart the request survived, as a down message would.
        const bool died = fabric_code(msg.reason) == fabric_errc::actor_crashed;
        handle_failure(self, std::move(msg.reason), died);
      },
      [=](retry_atom, std::uint32_t epoch) {
        auto& s = self->state;
        if (s.finished || s.epoch != epoch) return;
        place(self);
      },
      [=](deadline_atom) {
        auto& s = self->state;
        finish(self, finish_reason::error,
               make_error(fabric_errc::deadline_exceeded,
                          fmt::format("deadline of {} ms passed after {} of {} tokens",
                                      s.req.deadline_ms, s.emitted.size(), s.req.max_tokens)));
      },
      [=](cancel_atom) { finish(self, finish_reason::cancelled); },
  };
}

} // namespace

caf::actor spawn_request_actor(caf::actor_system& sys, std::shared_ptr<fabric_context> ctx,
                               caf::actor controller, std::uint64_t id, completion_request request,
                               completion_callbacks callbacks, std::function<void()> on_exit) {
  return sys.spawn(request_impl, std::move(ctx), std::move(controller), id, std::move(request),
                   std::move(callbacks), std::move(on_exit));
}

} // namespace duet::actors
