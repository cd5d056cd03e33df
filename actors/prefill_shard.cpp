#include "actors/prefill_shard.hpp"

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

#include <chrono>
#include <thread>
#include <unordered_map>

namespace duet::actors {

namespace {

struct shard_state {
  std::shared_ptr<fabric_context> ctx;
  prefill_shard_spec spec;
  std::unique_ptr<engine::runner> runner;
  std::unique_ptr<engine::kv_cache> kv;
  std::unique_ptr<kv_sender_set> senders;
  std::vector<float> x;      ///< [chunk_tokens][dim] scratch of the first shard
  std::vector<float> logits; ///< [vocab]
  std::unordered_map<std::uint64_t, std::uint32_t> epochs;   ///< request -> epoch held in kv
  std::unordered_map<std::uint64_t, caf::actor_addr> owners; ///< request -> its request actor

  static inline const char* name = "prefill_shard";

  void publish() {
    spec.blocks_used->store(static_cast<std::int64_t>(kv->blocks_used()));
    spec.blocks_free->store(static_cast<std::int64_t>(kv->blocks_free()));
    publish_node_kv(*ctx, spec.node);
  }

  void drop(std::uint64_t request) {
    if (kv->has_seq(request)) kv->seq_free(request);
    epochs.erase(request);
    owners.erase(request);
    publish();
  }
};

using shard_actor = caf::stateful_actor<shard_state>;

void report(shard_actor* self, const prefill_route& route, caf::error err) {
  self->send(route.request_actor, work_failed{route.request, route.epoch, std::move(err)});
}

/// Runs one chunk through this shard's layers. `x` holds [n][dim] (embedded already for the
/// first shard). Returns false when the actor quit (injected crash) or the chunk failed.
bool run_chunk(shard_actor* self, const prefill_route& route, int shard_index, int chunk, int pos0,
               int n, bool last, std::vector<float>& x) {
  auto& st = self->state;
  auto& ctx = *st.ctx;
  if (auto crash = ctx.faults.crash_prefill_at_chunk(st.spec.node, chunk)) {
    if (crash.whole_node) kill_node_actors(ctx, st.spec.node, self->address());
    self->quit(
        make_error(fabric_errc::injected_fault,
                   fmt::format("prefill shard {}/{} crashed{} at chunk {} of request {}",
                               st.spec.node, st.spec.shard_index,
                               crash.whole_node ? " with its node" : "", chunk, route.request)));
    return false;
  }
  auto seq = route.request;
  if (pos0 == 0) {
    st.drop(seq);
    st.kv->seq_add(seq);
    if (!st.kv->seq_reserve(seq, route.total_tokens)) {
      st.kv->seq_free(seq);
      report(self, route,
             make_error(fabric_errc::overloaded,
                        fmt::format("prefill shard {}/{}: no KV blocks for {} tokens ({} free)",
                                    st.spec.node, st.spec.shard_index, route.total_tokens,
                                    st.kv->blocks_free())));
      return false;
    }
    st.epochs[seq] = route.epoch;
    // The lease on this KV: if the request actor dies mid-prefill, the down message frees it.
    st.owners[seq] = route.request_actor.address();
    self->monitor(route.request_actor);
  } else {
    auto it = st.epochs.find(seq);
    if (it == st.epochs.end() || it->second != route.epoch) return false; // stale or lost
  }
  const auto& cfg = st.runner->config();
  if (ctx.config.prefill_chunk_delay_ms > 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(ctx.config.prefill_chunk_delay_ms));
  try {
    for (int layer = st.spec.first_layer; layer < st.spec.last_layer; ++layer) {
      st.runner->forward_layers(*st.kv, seq, pos0, n, layer, layer + 1,
                                std::span<float>(x.data(), std::size_t(n) * cfg.dim));
      auto meta = engine::kv_segment_for(*st.kv, layer, pos0, pos0 + n);
      transport::segment seg;
      seg.payload = transport::buffer::allocate(engine::kv_segment_bytes(meta));
      engine::kv_export(*st.kv, seq, meta, seg.payload.mutable_bytes());
      seg.header.request_id = seq;
      seg.header.epoch = route.epoch;
      seg.header.layer = static_cast<std::uint32_t>(layer);
      seg.header.token_begin = static_cast<std::uint32_t>(pos0);
      seg.header.token_end = static_cast<std::uint32_t>(pos0 + n);
      seg.header.dtype = static_cast<messages::kv_dtype>(meta.type);
      seg.header.n_kv_heads = static_cast<std::uint32_t>(meta.n_kv_heads);
      seg.header.head_size = static_cast<std::uint32_t>(meta.head_size);
      seg.header.payload_bytes = seg.payload.size();
      if (auto err = st.senders->send(route, std::move(seg))) { // queued: see kv_link.hpp
        st.drop(seq);
        report(self, route, std::move(err));
        return false;
      }
    }
  } catch (const engine::engine_error& e) {
    st.drop(seq);
    report(self, route,
           make_error(fabric_errc::engine_failure,
                      fmt::format("prefill shard {}/{} chunk {} of request {}: {}", st.spec.node,
                                  st.spec.shard_index, chunk, route.request, e.what())));
    return false;
  }
  bool has_next = std::size_t(shard_index + 1) < route.shards.size();
  if (has_next) {
    prefill_chunk next;
    next.route = route;
    next.shard_index = shard_index + 1;
    next.chunk = chunk;
    next.pos0 = pos0;
    next.n_tokens = n;
    next.last = last;
    next.x.assign(x.begin(), x.begin() + std::ptrdiff_t(n) * cfg.dim);
    self->send(route.shards[std::size_t(shard_index + 1)], std::move(next));
  } else if (last) {
    const float* row = x.data() + std::size_t(n - 1) * cfg.dim;
    st.runner->logits(std::span<const float>(row, std::size_t(cfg.dim)), st.logits);
    auto sampler = make_sampler(route.sampling, cfg.vocab_size);
    int position = pos0 + n;
    int token = sample_at(sampler.get(), route.sampling.seed, position, st.logits);
    self->send(route.request_actor, token_msg{route.request, route.epoch, position, token, true});
  }
  // The decode lane now holds the KV (or will re-request it by re-running the prefill), so
  // the shard keeps nothing once the prompt's last chunk has gone through.
  if (last) st.drop(seq);
  st.publish();
  return true;
}

caf::behavior prefill_shard_impl(shard_actor* self, std::shared_ptr<fabric_context> ctx,
                                 prefill_shard_spec spec) {
  auto& st = self->state;
  st.ctx = ctx;
  st.spec = spec;
  try {
    const auto& weights = *ctx->model.weights;
    engine::runner_options ro;
    ro.threads = ctx->config.engine_threads;
    ro.tokens_max = std::max(1, ctx->config.prefill_chunk_tokens);
    st.runner = std::make_unique<engine::runner>(weights, ro);
    auto kvc = engine::kv_cache_config::for_model(weights.config, spec.first_layer, spec.last_layer,
                                                  0, ctx->kv_type(), ctx->config.kv_block_tokens);
    kvc.blocks_max = kvc.blocks_for(std::max(1, ctx->config.prefill_sequences_max));
    st.kv = std::make_unique<engine::kv_cache>(kvc);
    st.x.resize(std::size_t(ro.tokens_max) * weights.config.dim);
    st.logits.resize(std::size_t(weights.config.vocab_size));
  } catch (const std::exception& e) {
    self->quit(make_error(
        fabric_errc::engine_failure,
        fmt::format("prefill shard {}/{} setup: {}", spec.node, spec.shard_index, e.what())));
    return {};
  }
  st.senders = std::make_unique<kv_sender_set>(ctx);
  st.publish();
  self->set_down_handler([=](caf::down_msg& dm) {
    auto& s = self->state;
    std::vector<std::uint64_t> gone;
    for (const auto& [request, owner] : s.owners)
      if (owner == dm.source) gone.push_back(request);
    for (auto request : gone) s.drop(request);
  });
  return {
      // The first shard of a pipeline: the whole prompt, embedded and run chunk by chunk.
      [=](prefill_job& job) {
        auto& s = self->state;
        const auto& cfg = s.runner->config();
        int total = int(job.tokens.size());
        int chunk_tokens = std::max(1, std::min(job.chunk_tokens, s.runner->tokens_max()));
        int chunk = 0;
        for (int pos0 = 0; pos0 < total; pos0 += chunk_tokens, ++chunk) {
          int n = std::min(chunk_tokens, total - pos0);
          try {
            s.runner->embed(std::span<const int>(job.tokens.data() + pos0, std::size_t(n)),
                            std::span<float>(s.x.data(), std::size_t(n) * cfg.dim));
          } catch (const engine::engine_error& e) {
            report(self, job.route,
                   make_error(fabric_errc::engine_failure,
                              fmt::format("prefill shard {}/{} embed: {}", s.spec.node,
                                          s.spec.shard_index, e.what())));
            return;
          }
          if (!run_chunk(self, job.route, 0, chunk, pos0, n, pos0 + n == total, s.x)) return;
        }
      },
      // A later shard: one chunk's hidden states from the shard before.
      [=](prefill_chunk& msg) {
        run_chunk(self, msg.route, msg.shard_index, msg.chunk, msg.pos0, msg.n_tokens, msg.last,
                  msg.x);
      },
      // The request ended or moved: forget its KV.
      [=](release_atom, std::uint64_t request) { self->state.drop(request); },
  };
}

} // namespace

caf::actor spawn_prefill_shard(caf::actor_system& sys, std::shared_ptr<fabric_context> ctx,
                               prefill_shard_spec spec) {
  return sys.spawn<caf::detached>(prefill_shard_impl, std::move(ctx), std::move(spec));
}

} // namespace duet::actors
