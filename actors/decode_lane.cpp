#include "actors/decode_lane.hpp"

#include "actors/errors.hpp"
#include "actors/fabric_messages.hpp"
#include "actors/kv_link.hpp"
#include "actors/token_sampling.hpp"
#include "engine/error.hpp"
#include "engine/forward.hpp"
#include "engine/kv_export.hpp"

#include <caf/all.hpp>

#include <fmt/core.h>
#include <prometheus/gauge.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <memory>
#include <thread>
#include <unordered_map>

namespace duet::actors {

namespace {

struct lane_seq {
  open_seq open;
  std::unique_ptr<engine::sampler> sampler;
  int prompt_tokens = -1; ///< KV positions that must arrive before decoding (-1: unknown yet)
  int next_token = -1;    ///< token to feed at next_pos
  int next_pos = -1;      ///< its position (== KV length)
  bool started = false;   ///< first token known
  bool running = false;   ///< in the batch
  bool done = false;      ///< produced its last token; waits for release
  // integrated prefill in progress
  std::vector<int> prompt;
  int prompt_done = 0;
  int chunk_tokens = 0;
};

struct waiter {
  open_seq open;
  caf::typed_response_promise<ok_atom> promise;
};

struct lane_state {
  std::shared_ptr<fabric_context> ctx;
  decode_lane_spec spec;
  std::unique_ptr<engine::runner> runner;
  std::unique_ptr<engine::kv_cache> kv;
  std::unordered_map<std::uint64_t, lane_seq> seqs;
  std::deque<waiter> waiters;
  std::vector<engine::decode_item> items; ///< [decode_batch_max]
  std::vector<std::uint64_t> batch;       ///< request of each item
  std::vector<std::uint64_t> running;     ///< step scratch: the running requests
  std::uint64_t rotation = 0; ///< last request stepped: the next full step starts after it
  /// [decode_batch_max][vocab], left uninitialized: a zero-filled vector touched every page
  /// at once (8 MB for 64 x 32000), and at ~13 us per page fault on this VM a restarted lane
  /// spent ~25 ms of a recovery on it whenever the allocator handed it fresh pages. A step
  /// writes the rows it reads, so pages fault in as batches grow.
  std::unique_ptr<float[]> logits;
  std::vector<float> x; ///< [chunk][dim] integrated prefill
  std::int64_t tokens_total = 0;
  bool step_pending = false;
  bool crashed = false; ///< quit by the fault injector; finish the handler without work
  std::deque<std::uint64_t> prefill_queue; ///< integrated prompts in progress, FIFO

  static inline const char* name = "decode_lane";

  void publish() {
    spec.blocks_used->store(static_cast<std::int64_t>(kv->blocks_used()));
    spec.blocks_free->store(static_cast<std::int64_t>(kv->blocks_free()));
    publish_node_kv(*ctx, spec.node);
  }
};

using lane_actor = caf::stateful_actor<lane_state>;

void schedule_step(lane_actor* self) {
  auto& st = self->state;
  if (st.step_pending) return;
  st.step_pending = true;
  self->send(self, step_atom::value);
}

void fail_seq(lane_actor* self, std::uint64_t request, caf::error err);

/// Admits waiting requests, oldest first, while their blocks fit.
void admit_waiters(lane_actor* self);

void free_seq(lane_actor* self, std::uint64_t request) {
  auto& st = self->state;
  st.seqs.erase(request);
  if (st.kv->has_seq(request)) st.kv->seq_free(request);
  st.prefill_queue.erase(std::remove(st.prefill_queue.begin(), st.prefill_queue.end(), request),
                         st.prefill_queue.end());
  st.publish();
  admit_waiters(self);
}

void fail_seq(lane_actor* self, std::uint64_t request, caf::error err) {
  auto& st = self->state;
  auto it = st.seqs.find(request);
  if (it == st.seqs.end()) return;
  self->send(it->second.open.request_actor,
             work_failed{request, it->second.open.epoch, std::move(err)});
  free_seq(self, request);
}

bool try_reserve(lane_actor* self, const open_seq& open) {
  auto& st = self->state;
  if (st.kv->has_seq(open.request)) st.kv->seq_free(open.request);
  st.kv->seq_add(open.request);
  if (!st.kv->seq_reserve(open.request, open.reserve_tokens)) {
    st.kv->seq_free(open.request);
    return false;
  }
  auto& seq = st.seqs[open.request];
  seq = lane_seq{};
  seq.open = open;
  seq.sampler = make_sampler(open.sampling, st.runner->config().vocab_size);
  self->monitor(open.request_actor);
  st.publish();
  return true;
}

void admit_waiters(lane_actor* self) {
  auto& st = self->state;
  while (!st.waiters.empty()) {
    auto& w = st.waiters.front();
    if (!try_reserve(self, w.open)) return;
    w.promise.deliver(ok_atom::value);
    st.waiters.pop_front();
  }
}

/// Starts decoding a sequence whose first token is known once its prompt KV is complete.
void maybe_run(lane_actor* self, lane_seq& seq) {
  auto& st = self->state;
  if (!seq.started || seq.running || seq.done) return;
  if (st.kv->seq_length(seq.open.request) < seq.next_pos) return;
  if (seq.next_pos >= seq.open.last_pos) {
    seq.done = true; // the first token was the last one asked for
    return;
  }
  seq.running = true;
  schedule_step(self);
}

/// One continuous-batch step over the running sequences: all of them, or when more run than
/// decode_batch_max, the next decode_batch_max in request order after the previous step's
/// (round robin), so none waits for others to finish. A sequence's tokens do not depend on
/// what it is batched with (kernels.hpp), so the rotation changes timing only.
void step(lane_actor* self) {
  auto& st = self->state;
  st.step_pending = false;
  auto& ctx = *st.ctx;
  st.items.clear();
  st.batch.clear();
  st.running.clear();
  for (const auto& [request, seq] : st.seqs)
    if (seq.running) st.running.push_back(request);
  const std::size_t batch_max = std::size_t(std::max(1, ctx.config.decode_batch_max));
  std::size_t first = 0;
  if (st.running.size() > batch_max) {
    std::sort(st.running.begin(), st.running.end());
    first = std::size_t(std::upper_bound(st.running.begin(), st.running.end(), st.rotation) -
                        st.running.begin());
  }
  for (std::size_t i = 0; i < st.running.size() && i < batch_max; ++i) {
    auto request = st.running[(first + i) % st.running.size()];
    const auto& seq = st.seqs.at(request);
    st.items.push_back({request, seq.next_token, seq.next_pos});
    st.batch.push_back(request);
  }
  if (!st.batch.empty()) st.rotation = st.batch.back();
  if (!st.items.empty()) {
    if (ctx.config.decode_step_delay_ms > 0)
      std::this_thread::sleep_for(std::chrono::milliseconds(ctx.config.decode_step_delay_ms));
    auto vocab = std::size_t(st.runner->config().vocab_size);
    try {
      st.runner->decode_batch(*st.kv, st.items,
                              std::span<float>(st.logits.get(), st.items.size() * vocab));
    } catch (const engine::engine_error& e) {
      auto err = make_error(fabric_errc::engine_failure,
                            fmt::format("decode lane {} step: {}", st.spec.node, e.what()));
      for (auto request : st.batch) fail_seq(self, request, err);
      return;
    }
    for (std::size_t i = 0; i < st.items.size(); ++i) {
      auto& seq = st.seqs[st.batch[i]];
      int position = st.items[i].pos + 1;
      int token = sample_at(seq.sampler.get(), seq.open.sampling.seed, position,
                            std::span<float>(st.logits.get() + i * vocab, vocab));
      self->send(seq.open.request_actor,
                 token_msg{seq.open.request, seq.open.epoch, position, token, false});
      bool stop = std::find(seq.open.stop_tokens.begin(), seq.open.stop_tokens.end(), token) !=
                  seq.open.stop_tokens.end();
      seq.next_token = token;
      seq.next_pos = position;
      if (stop || position >= seq.open.last_pos) {
        seq.running = false;
        seq.done = true;
      }
    }
    st.tokens_total += std::int64_t(st.items.size());
    if (auto crash = ctx.faults.crash_decode_after_tokens(st.spec.node, st.tokens_total)) {
      st.crashed = true;
      if (crash.whole_node) kill_node_actors(ctx, st.spec.node, self->address());
      self->quit(
          make_error(fabric_errc::injected_fault,
                     fmt::format("decode lane {} crashed{} after {} tokens", st.spec.node,
                                 crash.whole_node ? " with its node" : "", st.tokens_total)));
      return;
    }
  }
  bool any =
      std::any_of(st.seqs.begin(), st.seqs.end(), [](const auto& kv) { return kv.second.running; });
  if (any || !st.prefill_queue.empty()) schedule_step(self);
}

/// One chunk of the oldest integrated prompt (between decode steps, so running sequences keep
/// their pace).
void integrated_chunk(lane_actor* self) {
  auto& st = self->state;
  if (st.prefill_queue.empty()) return;
  auto request = st.prefill_queue.front();
  auto it = st.seqs.find(request);
  if (it == st.seqs.end()) {
    st.prefill_queue.pop_front();
    return;
  }
  auto& seq = it->second;
  const auto& cfg = st.runner->config();
  int total = int(seq.prompt.size());
  int n = std::min(seq.chunk_tokens, total - seq.prompt_done);
  try {
    auto x = std::span<float>(st.x.data(), std::size_t(n) * cfg.dim);
    st.runner->embed(std::span<const int>(seq.prompt.data() + seq.prompt_done, std::size_t(n)), x);
    st.runner->forward_layers(*st.kv, request, seq.prompt_done, n, 0, cfg.n_layers, x);
    seq.prompt_done += n;
    if (seq.prompt_done == total) {
      const float* row = st.x.data() + std::size_t(n - 1) * cfg.dim;
      auto vocab = std::size_t(cfg.vocab_size);
      st.runner->logits(std::span<const float>(row, std::size_t(cfg.dim)),
                        std::span<float>(st.logits.get(), vocab));
      int token = sample_at(seq.sampler.get(), seq.open.sampling.seed, total,
                            std::span<float>(st.logits.get(), vocab));
      st.prefill_queue.pop_front();
      self->send(seq.open.request_actor, token_msg{request, seq.open.epoch, total, token, false});
      bool stop = std::find(seq.open.stop_tokens.begin(), seq.open.stop_tokens.end(), token) !=
                  seq.open.stop_tokens.end();
      seq.prompt.clear();
      seq.prompt.shrink_to_fit();
      seq.started = true;
      seq.next_token = token;
      seq.next_pos = total;
      if (stop) seq.done = true;
      maybe_run(self, seq);
    }
  } catch (const engine::engine_error& e) {
    st.prefill_queue.pop_front();
    fail_seq(
        self, request,
        make_error(fabric_errc::engine_failure,
                   fmt::format("decode lane {} integrated prefill: {}", st.spec.node, e.what())));
  }
}

caf::behavior decode_lane_impl(lane_actor* self, std::shared_ptr<fabric_context> ctx,
                               decode_lane_spec spec) {
  auto& st = self->state;
  st.ctx = ctx;
  st.spec = spec;
  const auto& weights = *ctx->model.weights;
  const auto& cfg = weights.config;
  try {
    engine::runner_options ro;
    ro.threads = ctx->config.engine_threads;
    ro.tokens_max = std::max(ctx->config.decode_batch_max, ctx->config.prefill_chunk_tokens);
    st.runner = std::make_unique<engine::runner>(weights, ro);
    auto kvc = engine::kv_cache_config::for_model(cfg, 0, cfg.n_layers, 0, ctx->kv_type(),
                                                  ctx->config.kv_block_tokens);
    kvc.blocks_max = kvc.blocks_for(std::max(1, ctx->config.decode_sequences_max));
    st.kv = std::make_unique<engine::kv_cache>(kvc);
  } catch (const std::exception& e) {
    self->quit(make_error(fabric_errc::engine_failure,
                          fmt::format("decode lane {} setup: {}", spec.node, e.what())));
    return {};
  }
  auto batch = std::size_t(std::max(1, ctx->config.decode_batch_max));
  st.items.reserve(batch);
  st.batch.reserve(batch);
  st.logits = std::make_unique_for_overwrite<float[]>(batch * std::size_t(cfg.vocab_size));
  st.x.resize(std::size_t(std::max(1, ctx->config.prefill_chunk_tokens)) * cfg.dim);
  st.publish();
  // A request actor that goes away releases everything the lane holds for it.
  self->set_down_handler([=](caf::down_msg& dm) {
    auto& s = self->state;
    std::vector<std::uint64_t> gone;
    for (auto& [request, seq] : s.seqs)
      if (seq.open.request_actor.address() == dm.source) gone.push_back(request);
    for (auto request : gone) free_seq(self, request);
    s.waiters.erase(std::remove_if(s.waiters.begin(), s.waiters.end(),
                                   [&](const waiter& w) {
                                     return w.open.request_actor.address() == dm.source;
                                   }),
                    s.waiters.end());
  });
  return {
      // Reserve blocks for a request's whole budget; waits (boundedly) when the pool is full.
      [=](open_seq& open) -> caf::result<ok_atom> {
        auto& s = self->state;
        int blocks_needed =
            (open.reserve_tokens + s.kv->config().block_tokens - 1) / s.kv->config().block_tokens;
        if (open.reserve_tokens > s.kv->config().seq_len_max ||
            std::size_t(blocks_needed) > s.kv->blocks_max())
          return make_error(fabric_errc::no_capacity,
                            fmt::format("decode lane {}: {} tokens exceed its pool of {} blocks",
                                        s.spec.node, open.reserve_tokens, s.kv->blocks_max()));
        auto old = s.seqs.find(open.request);
        if (old != s.seqs.end()) free_seq(self, open.request);
        if (s.waiters.empty() && try_reserve(self, open)) return ok_atom::value;
        if (int(s.waiters.size()) >= s.ctx->config.admission_waiters_max)
          return make_error(fabric_errc::overloaded,
                            fmt::format("decode lane {}: {} requests already wait for KV blocks",
                                        s.spec.node, s.waiters.size()));
        auto promise = self->make_response_promise<ok_atom>();
        s.waiters.push_back({open, promise});
        return promise;
      },
      // KV of one layer and token range, from a prefill shard (via the transport pump or CAF).
      [=](kv_arrived& msg) {
        auto& s = self->state;
        auto& seg = *msg.segment;
        if (auto problem = kv_segment_problem(seg); !problem.empty()) {
          s.ctx->counters.kv_segments_rejected.fetch_add(1, std::memory_order_relaxed);
          return; // dropped: the request's KV timeout re-runs its prefill
        }
        auto it = s.seqs.find(seg.header.request_id);
        if (it == s.seqs.end() || it->second.open.epoch != seg.header.epoch) return; // stale
        engine::kv_segment_meta meta;
        meta.layer = int(seg.header.layer);
        meta.pos_begin = int(seg.header.token_begin);
        meta.pos_end = int(seg.header.token_end);
        meta.type = static_cast<engine::dtype>(seg.header.dtype);
        meta.n_kv_heads = int(seg.header.n_kv_heads);
        meta.head_size = int(seg.header.head_size);
        try {
          engine::kv_import(*s.kv, seg.header.request_id, meta, seg.payload.bytes());
        } catch (const engine::engine_error& e) {
          fail_seq(
              self, seg.header.request_id,
              make_error(fabric_errc::kv_corrupt,
                         fmt::format("decode lane {} import layer {} [{}, {}): {}", s.spec.node,
                                     meta.layer, meta.pos_begin, meta.pos_end, e.what())));
          return;
        }
        msg.segment.reset(); // releases the transport's credit now
        maybe_run(self, it->second);
      },
      // The first token (from the last prefill shard): decoding starts once the KV is in.
      [=](start_decode& msg) {
        auto& s = self->state;
        auto it = s.seqs.find(msg.request);
        if (it == s.seqs.end() || it->second.open.epoch != msg.epoch) return;
        auto& seq = it->second;
        seq.started = true;
        seq.next_token = msg.token;
        seq.next_pos = msg.position;
        seq.prompt_tokens = msg.position;
        maybe_run(self, seq);
        if (!seq.running && !seq.done)
          self->delayed_send(self, std::chrono::milliseconds(s.ctx->config.kv_timeout_ms),
                             kv_check_atom::value, msg.request, msg.epoch);
      },
      [=](kv_check_atom, std::uint64_t request, std::uint32_t epoch) {
        auto& s = self->state;
        auto it = s.seqs.find(request);
        if (it == s.seqs.end() || it->second.open.epoch != epoch) return;
        auto& seq = it->second;
        if (seq.running || seq.done) return;
        fail_seq(self, request,
                 make_error(fabric_errc::kv_timeout,
                            fmt::format("decode lane {}: request {} epoch {} has KV for {} of {} "
                                        "positions after {} ms",
                                        s.spec.node, request, epoch, s.kv->seq_length(request),
                                        seq.next_pos, s.ctx->config.kv_timeout_ms)));
      },
      // Integrated: run the prompt here.
      [=](integrated_job& job) {
        auto& s = self->state;
        auto it = s.seqs.find(job.request);
        if (it == s.seqs.end() || it->second.open.epoch != job.epoch) return;
        auto& seq = it->second;
        seq.prompt = std::move(job.tokens);
        seq.prompt_done = 0;
        seq.chunk_tokens =
            std::max(1, std::min(job.chunk_tokens, s.ctx->config.prefill_chunk_tokens));
        s.prefill_queue.push_back(job.request);
        schedule_step(self);
      },
      [=](step_atom) {
        // Decode first, then one prefill chunk: a long integrated prompt delays each running
        // sequence by at most one chunk per step.
        step(self);
        if (self->state.crashed) return;
        integrated_chunk(self);
        auto& s = self->state;
        if (!s.prefill_queue.empty()) schedule_step(self);
      },
      [=](release_atom, std::uint64_t request) {
        auto& s = self->state;
        s.waiters.erase(std::remove_if(s.waiters.begin(), s.waiters.end(),
                                       [&](const waiter& w) { return w.open.request == request; }),
                        s.waiters.end());
        if (s.seqs.count(request) != 0) free_seq(self, request);
      },
  };
}

} // namespace

caf::actor spawn_decode_lane(caf::actor_system& sys, std::shared_ptr<fabric_context> ctx,
                             decode_lane_spec spec) {
  return sys.spawn<caf::detached>(decode_lane_impl, std::move(ctx), std::move(spec));
}

} // namespace duet::actors
