#include "actors/controller.hpp"

#include "actors/decode_lane.hpp"
#include "actors/errors.hpp"
#include "actors/fabric_messages.hpp"
#include "actors/prefill_shard.hpp"
#include "actors/remote_node.hpp"

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
  std::uint64_t generation = 0; ///< remote spawns: only the latest request's reply counts
  bool spawning = false;        ///< remote spawn asked, reply not in yet
};

struct assignment {
  int decode_node = -1;
  int pipeline = -1;
  caf::actor requester;    ///< the request actor (told when a node it runs on dies)
  std::uint32_t epoch = 0; ///< the request's epoch this placement serves
};

struct controller_state {
  std::shared_ptr<fabric_context> ctx;
  controller_spec spec;
  std::map<std::string, slot> slots;
  std::vector<std::vector<std::string>> pipeline_slots; ///< [pipeline][shard] slot names
  std::vector<int> node_depth;                          ///< [node] requests placed there
  std::vector<int> pipeline_depth;                      ///< [pipeline]
  std::unordered_map<std::uint64_t, assignment> assignments;
  std::vector<bool> node_dead;                                  ///< [node] multi-process
  std::vector<std::chrono::steady_clock::time_point> last_seen; ///< [node] last heartbeat
  bool stopping = false;

  static inline const char* name = "controller";
};

using controller_actor = caf::stateful_actor<controller_state>;

void emit(controller_actor* self, const std::string& text) {
  if (self->state.ctx->on_event) self->state.ctx->on_event(text);
}

void spawn_slot(controller_actor* self, slot& s) {
  auto& st = self->state;
  s.entry.blocks_used->store(0);
  s.entry.blocks_free->store(0);
  const auto& node = st.spec.nodes[std::size_t(s.entry.node)];
  if (node.agent) {
    // Multi-process: the node's agent spawns it; the slot is alive once the reply is in.
    s.entry.alive = false;
    s.entry.handle = caf::actor{};
    auto generation = ++s.generation;
    s.spawning = true;
    slot_request rq;
    rq.name = s.entry.name;
    rq.decode = s.entry.kind == actor_kind::decode_lane;
    rq.node = s.entry.node;
    rq.shard_index = s.shard_index;
    rq.first_layer = s.first_layer;
    rq.last_layer = s.last_layer;
    auto name = s.entry.name;
    self->request(node.agent, std::chrono::seconds(10), spawn_atom::value, rq)
        .then(
            [=](caf::actor& handle) {
              auto& st2 = self->state;
              auto it = st2.slots.find(name);
              if (st2.stopping || it == st2.slots.end() || it->second.generation != generation ||
                  st2.node_dead[std::size_t(it->second.entry.node)]) {
                self->send_exit(handle, caf::exit_reason::user_shutdown);
                return;
              }
              auto& sl = it->second;
              sl.spawning = false;
              sl.entry.handle = std::move(handle);
              sl.entry.alive = true;
              self->monitor(sl.entry.handle);
              st2.ctx->registry.put(sl.entry);
              emit(self, fmt::format("spawned {} on node {}", name, sl.entry.node));
            },
            [=](caf::error& err) {
              // The node is unreachable: the slot stays dead until membership declares the
              // node dead and re-places it.
              auto& st2 = self->state;
              auto it = st2.slots.find(name);
              if (it != st2.slots.end() && it->second.generation == generation)
                it->second.spawning = false;
              emit(self, fmt::format("spawn of {} failed: {}", name, describe(err)));
            });
    st.ctx->registry.put(s.entry);
    return;
  }
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
    // A dead node's actors are re-placed by node_down, not restarted where they were.
    if (s.node_dead[std::size_t(sl.entry.node)]) return;
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

/// A node's heartbeat report: its actors' KV pools go into the registry entries of the slots it
/// runs (the controller's copies, which /metrics and kv_blocks_in_use() read) and its KV sends
/// into the transfer metrics and counters, as if its shards had sent from this process.
void apply_report(fabric_context& ctx, const node_report& report) {
  for (const auto& load : report.actors) {
    auto entry = ctx.registry.find(load.name);
    if (!entry || entry->node != report.node) continue; // the slot moved on (re-placed)
    entry->blocks_used->store(load.blocks_used);
    entry->blocks_free->store(load.blocks_free);
  }
  publish_node_kv(ctx, report.node);
  const std::size_t listed = std::min(report.kv_send_seconds.size(), report.kv_send_bytes.size());
  std::uint64_t bytes = report.unlisted_bytes;
  double seconds = report.unlisted_seconds;
  for (std::size_t i = 0; i < listed; ++i) {
    observe_kv_transfer(ctx.metrics, report.kv_send_seconds[i], report.kv_send_bytes[i]);
    bytes += report.kv_send_bytes[i];
    seconds += report.kv_send_seconds[i];
  }
  if (ctx.metrics.kv_bytes != nullptr && report.unlisted_bytes > 0)
    ctx.metrics.kv_bytes->Increment(double(report.unlisted_bytes));
  ctx.counters.kv_segments_sent.fetch_add(listed + report.unlisted_sends);
  ctx.counters.kv_bytes_sent.fetch_add(bytes);
  ctx.counters.kv_send_ns.fetch_add(static_cast<std::uint64_t>(seconds * 1e9));
}

/// A node process is gone (its agent is down or its heartbeats stopped): its actors are dead
/// for good there. Its decode lane is not moved (a node serves one lane; requests re-place onto
/// the live lanes); each prefill shard is re-spawned on the live prefill-capable node that
/// holds the fewest shards, so its pipeline comes back with the same layer range.
void node_down(controller_actor* self, int node, const std::string& why) {
  auto& st = self->state;
  if (st.stopping || st.node_dead[std::size_t(node)]) return;
  st.node_dead[std::size_t(node)] = true;
  emit(self, fmt::format("node {} down: {}", node, why));
  // Requests running there are told at once: a hung node (heartbeats stopped, connection
  // still open) sends its requests no down message of its own.
  for (const auto& [request, a] : st.assignments) {
    bool affected = a.decode_node == node;
    if (a.pipeline >= 0)
      for (const auto& shard : st.spec.pipelines[std::size_t(a.pipeline)].shards)
        affected = affected || shard.node_id == node;
    if (affected && a.requester)
      self->send(a.requester, work_failed{request, a.epoch,
                                          make_error(fabric_errc::actor_crashed,
                                                     fmt::format("node {} down: {}", node, why))});
  }
  for (auto& [name, sl] : st.slots) {
    if (sl.entry.node != node) continue;
    ++sl.generation; // a spawn reply still on its way is void
    sl.spawning = false;
    if (sl.entry.alive) self->demonitor(sl.entry.handle);
    sl.entry.alive = false;
    sl.entry.handle = caf::actor{};
    sl.entry.blocks_used->store(0);
    sl.entry.blocks_free->store(0);
    st.ctx->registry.put(sl.entry);
    if (sl.entry.kind != actor_kind::prefill_shard) continue;
    int best = -1;
    int best_count = 0;
    for (const auto& n : st.spec.nodes) {
      if (!n.prefill || st.node_dead[std::size_t(n.node_id)]) continue;
      int count = 0;
      for (const auto& [other_name, other] : st.slots)
        if (other.entry.kind == actor_kind::prefill_shard && other.entry.node == n.node_id) ++count;
      if (best < 0 || count < best_count) {
        best = n.node_id;
        best_count = count;
      }
    }
    if (best < 0) {
      emit(self, fmt::format("{} stays dead: no live prefill node", name));
      continue;
    }
    sl.entry.node = best;
    for (std::size_t p = 0; p < st.pipeline_slots.size(); ++p)
      for (std::size_t i = 0; i < st.pipeline_slots[p].size(); ++i)
        if (st.pipeline_slots[p][i] == name) st.spec.pipelines[p].shards[i].node_id = best;
    emit(self, fmt::format("re-placing {} on node {}", name, best));
    spawn_slot(self, sl);
  }
}

std::string roles_of(bool prefill, bool decode) {
  return prefill && decode ? "prefill+decode" : prefill ? "prefill" : decode ? "decode" : "none";
}

/// A node process joining after the start: it replaces the first dead node with its profile
/// and roles (id, KV address, agent), is started like the first ones, and the slots still
/// placed on that id are spawned on it. Refused, with the dead nodes listed, when none fits.
caf::result<std::int32_t> rejoin(controller_actor* self, node_hello& hello) {
  auto& st = self->state;
  if (st.stopping) return make_error(fabric_errc::overloaded, "controller: stopping");
  int id = -1;
  std::string dead;
  for (const auto& n : st.spec.nodes) {
    if (!st.node_dead[std::size_t(n.node_id)]) continue;
    dead += fmt::format("{}node {} ({}, {})", dead.empty() ? "" : ", ", n.node_id, n.profile.name,
                        roles_of(n.prefill, n.decode));
    if (id < 0 && n.prefill == hello.prefill && n.decode == hello.decode &&
        n.profile.name == hello.profile)
      id = n.node_id;
  }
  if (id < 0) {
    auto why = fmt::format(
        "no dead node with profile {} and roles {} to replace (the cluster size is "
        "fixed at start; dead nodes: {})",
        hello.profile, roles_of(hello.prefill, hello.decode), dead.empty() ? "none" : dead);
    emit(self, fmt::format("join refused pid {}: {}", hello.pid, why));
    return make_error(fabric_errc::overloaded, "controller: " + why);
  }
  auto& node = st.spec.nodes[std::size_t(id)];
  if (hello.kv_dtype != node.kv_dtype) {
    auto why = fmt::format("it stores K and V as {}, the cluster as {} (duet node --kv-dtype): a "
                           "decode lane takes segments of its own type only",
                           hello.kv_dtype, node.kv_dtype);
    emit(self, fmt::format("join refused pid {}: {}", hello.pid, why));
    return make_error(fabric_errc::overloaded, "controller: " + why);
  }
  node.agent = hello.agent;
  node.kv_address = hello.kv_address;
  st.node_dead[std::size_t(id)] = false;
  st.last_seen[std::size_t(id)] = std::chrono::steady_clock::now();
  self->monitor(node.agent);
  emit(self, fmt::format("node {} rejoined pid {} profile {} roles {} kv {}", id, hello.pid,
                         hello.profile, roles_of(hello.prefill, hello.decode),
                         hello.kv_address.empty() ? "-" : hello.kv_address));
  self->send(node.agent, start_atom::value, caf::actor_cast<caf::actor>(self), std::int32_t(id),
             std::int32_t(st.spec.heartbeat_interval_ms));
  for (auto& [name, sl] : st.slots) {
    if (sl.entry.node != id || sl.entry.alive) continue;
    sl.restarts.clear(); // a new process: the old one's crash history does not count
    spawn_slot(self, sl);
  }
  return std::int32_t(id);
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
  st.node_dead.assign(st.spec.nodes.size(), false);
  st.last_seen.assign(st.spec.nodes.size(), std::chrono::steady_clock::now());
  for (const auto& node : st.spec.nodes)
    if (node.agent) self->monitor(node.agent);
  if (st.spec.heartbeat_timeout_ms > 0)
    self->delayed_send(self, std::chrono::milliseconds(st.spec.heartbeat_timeout_ms / 4 + 1),
                       tick_atom::value);
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
  self->set_down_handler([=](caf::down_msg& dm) {
    auto& s = self->state;
    for (const auto& node : s.spec.nodes)
      if (node.agent && node.agent.address() == dm.source) {
        node_down(self, node.node_id, fmt::format("agent down: {}", describe(dm.reason)));
        return;
      }
    slot_down(self, dm.source);
  });
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
        if (!decision) {
          // Nothing live fits, but a lane or shard is being restarted on a node process: the
          // request waits for it (overloaded: retried until its deadline) instead of failing.
          if (fabric_code(decision.error()) == fabric_errc::no_capacity)
            for (const auto& [name, sl] : s.slots)
              if (sl.spawning)
                return make_error(fabric_errc::overloaded,
                                  fmt::format("{} is restarting on node {}; placement retries",
                                              name, sl.entry.node));
          return decision.error();
        }
        placement_reply reply;
        reply.disaggregated = decision->disaggregated;
        reply.decode_node = decision->decode_node;
        reply.lane = s.slots.at(decode_lane_name(decision->decode_node)).entry.handle;
        reply.kv_address = s.spec.nodes[std::size_t(decision->decode_node)].kv_address;
        reply.reason = decision->reason;
        assignment a;
        a.decode_node = decision->decode_node;
        a.requester = caf::actor_cast<caf::actor>(self->current_sender());
        a.epoch = q.epoch;
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
        std::string prefill_nodes;
        for (int node : reply.shard_nodes)
          prefill_nodes += (prefill_nodes.empty() ? "" : ",") + std::to_string(node);
        emit(self, fmt::format("placed {} decode_node {} {}{}", q.request, a.decode_node,
                               decision->disaggregated ? "disaggregated" : "integrated",
                               prefill_nodes.empty() ? "" : " prefill_nodes " + prefill_nodes));
        return reply;
      },
      [=](finished_atom, std::uint64_t request) { unassign(self, request); },
      [=](join_atom, node_hello& hello) { return rejoin(self, hello); },
      [=](heartbeat_atom, node_report& report) {
        auto& s = self->state;
        auto node = report.node;
        if (node < 0 || std::size_t(node) >= s.last_seen.size() || s.node_dead[std::size_t(node)])
          return;
        s.last_seen[std::size_t(node)] = std::chrono::steady_clock::now();
        apply_report(*s.ctx, report);
      },
      // Membership: a node whose heartbeats stopped is dead even if its connection lingers.
      [=](tick_atom) {
        auto& s = self->state;
        if (s.stopping) return;
        auto timeout = std::chrono::milliseconds(s.spec.heartbeat_timeout_ms);
        auto now = std::chrono::steady_clock::now();
        for (const auto& node : s.spec.nodes)
          if (node.agent && !s.node_dead[std::size_t(node.node_id)] &&
              now - s.last_seen[std::size_t(node.node_id)] > timeout)
            node_down(self, node.node_id,
                      fmt::format("no heartbeat for {} ms", s.spec.heartbeat_timeout_ms));
        self->delayed_send(self, timeout / 4 + std::chrono::milliseconds(1), tick_atom::value);
      },
  };
}

} // namespace

caf::actor spawn_controller(caf::actor_system& sys, std::shared_ptr<fabric_context> ctx,
                            controller_spec spec) {
  return sys.spawn(controller_impl, std::move(ctx), std::move(spec));
}

} // namespace duet::actors
