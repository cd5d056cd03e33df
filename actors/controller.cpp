#include "actors/controller.hpp"

#include "actors/decode_lane.hpp"
#include "actors/errors.hpp"
#include "actors/fabric_messages.hpp"
#include "actors/prefill_shard.hpp"

#include <caf/all.hpp>

#include <fmt/core.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>

#include <chrono>
#include <deque>
#include <map>
#include <unordered_map>

namespace duet::actors {

std::string decode_lane_name(int node) {
  return fmt::format("decode/{}", node);
}
std::string prefill_shard_name(int node, int shard_index) {
  return fmt::format("prefill/{}/{}", node, shard_index);
}

namespace {

struct slot {
  actor_entry entry;
  int first_layer = 0; ///< prefill shards
  int last_layer = 0;
  int shard_index = 0;
  std::deque<std::chrono::steady_clock::time_point> restarts; ///< within the window
};

struct assignment {
  int decode_node = -1;
  int pipeline = -1;
};

struct controller_state {
  std::shared_ptr<fabric_context> ctx;
  controller_spec spec;
  std::map<std::string, slot> slots;
  std::vector<std::vector<std::string>> pipeline_slots; ///< [pipeline][shard] slot names
  std::vector<int> node_depth;                          ///< [node] requests placed there
  std::vector<int> pipeline_depth;                      ///< [pipeline]
  std::unordered_map<std::uint64_t, assignment> assignments;
  bool stopping = false;

  static inline const char* name = "controller";
};

using controller_actor = caf::stateful_actor<controller_state>;

void spawn_slot(controller_actor* self, slot& s) {
  auto& st = self->state;
  s.entry.blocks_used->store(0);
  s.entry.blocks_free->store(0);
  if (s.entry.kind == actor_kind::decode_lane) {
    s.entry.handle = spawn_decode_lane(self->system(), st.ctx,
                                       {s.entry.node, s.entry.blocks_used, s.entry.blocks_free});
  } else {
    s.entry.handle = spawn_prefill_shard(self->system(), st.ctx,
                                         {s.entry.node, s.shard_index, s.first_layer, s.last_layer,
                                          s.entry.blocks_used, s.entry.blocks_free});
  }
  s.entry.alive = true;
  self->monitor(s.entry.handle);
  st.ctx->registry.put(s.entry);
}

/// The actor at `source` died: restart its slot (bounded). Unknown or already-replaced
/// addresses are ignored, so a request's report and the down message can come in any order.
void slot_down(controller_actor* self, const caf::actor_addr& source) {
  auto& s = self->state;
  if (s.stopping || !source) return;
  for (auto& [name, sl] : s.slots) {
    if (!sl.entry.alive || sl.entry.handle.address() != source) continue;
    sl.entry.alive = false;
    sl.entry.handle = caf::actor{};
    sl.entry.blocks_used->store(0);
    sl.entry.blocks_free->store(0);
    s.ctx->registry.put(sl.entry);
    // A crash loop stops here: too many restarts within the window and the slot stays dead
    // (placement avoids it; requests that need it fail with a clear error).
    auto now = std::chrono::steady_clock::now();
    auto window = std::chrono::milliseconds(s.ctx->config.actor_restart_window_ms);
    while (!sl.restarts.empty() && now - sl.restarts.front() > window) sl.restarts.pop_front();
    if (int(sl.restarts.size()) >= s.ctx->config.actor_restarts_max) return; // stays dead
    sl.restarts.push_back(now);
    s.ctx->counters.actor_restarts.fetch_add(1, std::memory_order_relaxed);
    auto* counter = sl.entry.kind == actor_kind::decode_lane ? s.ctx->metrics.restarts_decode
                                                             : s.ctx->metrics.restarts_prefill;
    if (counter != nullptr) counter->Increment();
    spawn_slot(self, sl);
    return;
  }
}

void update_depth_gauges(controller_actor* self) {
  auto& st = self->state;
  for (std::size_t n = 0; n < st.node_depth.size() && n < st.ctx->metrics.queue_depth.size(); ++n)
    if (st.ctx->metrics.queue_depth[n] != nullptr)
      st.ctx->metrics.queue_depth[n]->Set(st.node_depth[n]);
}

void unassign(controller_actor* self, std::uint64_t request) {
  auto& st = self->state;
  auto it = st.assignments.find(request);
  if (it == st.assignments.end()) return;
  if (it->second.decode_node >= 0) --st.node_depth[std::size_t(it->second.decode_node)];
  if (it->second.pipeline >= 0) {
    --st.pipeline_depth[std::size_t(it->second.pipeline)];
    for (const auto& shard : st.spec.pipelines[std::size_t(it->second.pipeline)].shards)
      --st.node_depth[std::size_t(shard.node_id)];
  }
  st.assignments.erase(it);
  update_depth_gauges(self);
}

caf::behavior controller_impl(controller_actor* self, std::shared_ptr<fabric_context> ctx,
                              controller_spec spec) {
  auto& st = self->state;
  st.ctx = std::move(ctx);
  st.spec = std::move(spec);
  st.node_depth.assign(st.spec.nodes.size(), 0);
  st.pipeline_depth.assign(st.spec.pipelines.size(), 0);
  for (const auto& node : st.spec.nodes) {
    if (!node.decode) continue;
    slot s;
    s.entry.name = decode_lane_name(node.node_id);
    s.entry.kind = actor_kind::decode_lane;
    s.entry.node = node.node_id;
    auto [it, _] = st.slots.emplace(s.entry.name, std::move(s));
    spawn_slot(self, it->second);
  }
  for (const auto& plan : st.spec.pipelines) {
    std::vector<std::string> names;
    for (std::size_t i = 0; i < plan.shards.size(); ++i) {
      slot s;
      s.entry.name = prefill_shard_name(plan.shards[i].node_id, int(i));
      s.entry.kind = actor_kind::prefill_shard;
      s.entry.node = plan.shards[i].node_id;
      s.first_layer = plan.shards[i].layer_begin;
      s.last_layer = plan.shards[i].layer_end;
      s.shard_index = int(i);
      names.push_back(s.entry.name);
      auto [it, _] = st.slots.emplace(s.entry.name, std::move(s));
      spawn_slot(self, it->second);
    }
    st.pipeline_slots.push_back(std::move(names));
  }

  // The supervisor: restart the one actor that died, boundedly.
  self->set_down_handler([=](caf::down_msg& dm) { slot_down(self, dm.source); });
  self->set_exit_handler([=](caf::exit_msg& em) {
    auto& s = self->state;
    s.stopping = true;
    for (auto& [name, sl] : s.slots)
      if (sl.entry.alive) self->send_exit(sl.entry.handle, caf::exit_reason::user_shutdown);
    s.slots.clear();
    s.ctx->registry.clear();
    self->quit(em.reason);
  });

  return {
      [=](place_atom, place_query& q) -> caf::result<placement_reply> {
        auto& s = self->state;
        slot_down(self, q.dead);
        unassign(self, q.request);
        std::vector<node_view> views;
        int decode_alive = 0;
        for (const auto& node : s.spec.nodes) {
          node_view v;
          v.node_id = node.node_id;
          v.profile = node.profile;
          v.prefill = node.prefill;
          v.decode = node.decode;
          v.queue_depth = s.node_depth[std::size_t(node.node_id)];
          if (node.decode) {
            const auto& lane = s.slots.at(decode_lane_name(node.node_id));
            v.alive = lane.entry.alive;
            v.kv_blocks_free = int(lane.entry.blocks_free->load());
            decode_alive += v.alive ? 1 : 0;
          }
          views.push_back(std::move(v));
        }
        // Steer a retried request away from the lane that just failed it, when there is another.
        if (q.avoid_decode_node >= 0 && decode_alive > 1)
          views[std::size_t(q.avoid_decode_node)].alive = false;
        std::vector<int> depth = s.pipeline_depth;
        for (std::size_t p = 0; p < s.pipeline_slots.size(); ++p)
          for (const auto& name : s.pipeline_slots[p])
            if (!s.slots.at(name).entry.alive) depth[p] = -1;
        placement_query pq{q.prompt_tokens, q.max_tokens, static_cast<placement_mode>(q.mode)};
        if (pq.mode == placement_mode::automatic) pq.mode = s.ctx->config.placement;
        auto decision = place_request(pq, views, depth, s.ctx->config.policy);
        if (!decision) return decision.error();
        placement_reply reply;
        reply.disaggregated = decision->disaggregated;
        reply.decode_node = decision->decode_node;
        reply.lane = s.slots.at(decode_lane_name(decision->decode_node)).entry.handle;
        reply.kv_address = s.spec.nodes[std::size_t(decision->decode_node)].kv_address;
        reply.reason = decision->reason;
        assignment a;
        a.decode_node = decision->decode_node;
        ++s.node_depth[std::size_t(a.decode_node)];
        if (decision->disaggregated) {
          a.pipeline = decision->pipeline;
          ++s.pipeline_depth[std::size_t(a.pipeline)];
          const auto& plan = s.spec.pipelines[std::size_t(a.pipeline)];
          for (std::size_t i = 0; i < plan.shards.size(); ++i) {
            reply.shards.push_back(
                s.slots.at(s.pipeline_slots[std::size_t(a.pipeline)][i]).entry.handle);
            reply.shard_nodes.push_back(plan.shards[i].node_id);
            ++s.node_depth[std::size_t(plan.shards[i].node_id)];
          }
          s.ctx->counters.disaggregated.fetch_add(1, std::memory_order_relaxed);
          if (s.ctx->metrics.placed_disaggregated != nullptr)
            s.ctx->metrics.placed_disaggregated->Increment();
        } else {
          s.ctx->counters.integrated.fetch_add(1, std::memory_order_relaxed);
          if (s.ctx->metrics.placed_integrated != nullptr)
            s.ctx->metrics.placed_integrated->Increment();
        }
        s.assignments[q.request] = a;
        update_depth_gauges(self);
        return reply;
      },
      [=](finished_atom, std::uint64_t request) { unassign(self, request); },
  };
}

} // namespace

caf::actor spawn_controller(caf::actor_system& sys, std::shared_ptr<fabric_context> ctx,
                            controller_spec spec) {
  return sys.spawn(controller_impl, std::move(ctx), std::move(spec));
}

} // namespace duet::actors
