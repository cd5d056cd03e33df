#include "actors/remote_node.hpp"

#include "actors/decode_lane.hpp"
#include "actors/errors.hpp"
#include "actors/fabric_messages.hpp"
#include "actors/prefill_shard.hpp"

#include <caf/all.hpp>

#include <chrono>
#include <vector>

namespace duet::actors {

void add_fabric_message_types(caf::actor_system_config& cfg) {
  cfg.add_message_type<sampling_params>("duet::sampling_params");
  cfg.add_message_type<placement_reply>("duet::placement_reply");
  cfg.add_message_type<open_seq>("duet::open_seq");
  cfg.add_message_type<prefill_route>("duet::prefill_route");
  cfg.add_message_type<prefill_job>("duet::prefill_job");
  cfg.add_message_type<prefill_chunk>("duet::prefill_chunk");
  cfg.add_message_type<integrated_job>("duet::integrated_job");
  cfg.add_message_type<token_msg>("duet::token_msg");
  cfg.add_message_type<start_decode>("duet::start_decode");
  cfg.add_message_type<work_failed>("duet::work_failed");
  cfg.add_message_type<place_query>("duet::place_query");
  cfg.add_message_type<node_hello>("duet::node_hello");
  cfg.add_message_type<slot_request>("duet::slot_request");
  cfg.add_message_type<actor_load>("duet::actor_load");
  cfg.add_message_type<std::vector<actor_load>>("duet::actor_loads");
  cfg.add_message_type<node_report>("duet::node_report");
}

namespace {

struct agent_state {
  std::shared_ptr<fabric_context> ctx;
  caf::actor controller;
  std::int32_t node = -1;
  std::chrono::milliseconds interval{200};
  std::vector<caf::actor> spawned; ///< every incarnation this agent started and still alive
  bool stopping = false;

  static inline const char* name = "node_agent";
};

using agent_actor = caf::stateful_actor<agent_state>;

/// This node's heartbeat: its live actors' KV pools and the KV sends logged since the last.
node_report make_report(agent_state& st) {
  node_report r;
  r.node = st.node;
  for (const auto& e : st.ctx->registry.snapshot())
    if (e.alive) r.actors.push_back({e.name, e.blocks_used->load(), e.blocks_free->load()});
  auto sends = st.ctx->send_log.drain();
  r.kv_send_seconds = std::move(sends.seconds);
  r.kv_send_bytes = std::move(sends.bytes);
  r.unlisted_sends = sends.unlisted_sends;
  r.unlisted_bytes = sends.unlisted_bytes;
  r.unlisted_seconds = sends.unlisted_seconds;
  return r;
}

void stop_all(agent_actor* self, const caf::error& reason) {
  auto& st = self->state;
  if (st.stopping) return;
  st.stopping = true;
  for (auto& a : st.spawned) self->send_exit(a, caf::exit_reason::user_shutdown);
  st.spawned.clear();
  st.ctx->registry.clear();
  self->quit(reason);
}

caf::behavior agent_impl(agent_actor* self, std::shared_ptr<fabric_context> ctx) {
  self->state.ctx = std::move(ctx);
  self->set_down_handler([=](caf::down_msg& dm) {
    auto& st = self->state;
    if (st.controller && dm.source == st.controller.address()) {
      // The controller is gone (shut down or unreachable): this node has nobody to serve.
      stop_all(self, caf::exit_reason::normal);
      return;
    }
    for (auto it = st.spawned.begin(); it != st.spawned.end(); ++it) {
      if (it->address() != dm.source) continue;
      st.spawned.erase(it);
      break;
    }
    for (const auto& e : st.ctx->registry.snapshot())
      if (e.alive && e.handle.address() == dm.source)
        st.ctx->registry.set_handle(e.name, caf::actor{}, false);
  });
  self->set_exit_handler([=](caf::exit_msg& em) { stop_all(self, em.reason); });
  return {
      [=](spawn_atom, slot_request& rq) -> caf::result<caf::actor> {
        auto& st = self->state;
        if (st.stopping) return make_error(fabric_errc::actor_crashed, "node agent stopping");
        actor_entry e;
        e.name = rq.name;
        e.kind = rq.decode ? actor_kind::decode_lane : actor_kind::prefill_shard;
        e.node = rq.node;
        if (rq.decode)
          e.handle =
              spawn_decode_lane(self->system(), st.ctx, {rq.node, e.blocks_used, e.blocks_free});
        else
          e.handle = spawn_prefill_shard(self->system(), st.ctx,
                                         {rq.node, rq.shard_index, rq.first_layer, rq.last_layer,
                                          e.blocks_used, e.blocks_free});
        e.alive = true;
        self->monitor(e.handle);
        st.spawned.push_back(e.handle);
        st.ctx->registry.put(e);
        return e.handle;
      },
      [=](start_atom, caf::actor controller, std::int32_t node, std::int32_t interval_ms) {
        auto& st = self->state;
        st.controller = std::move(controller);
        st.node = node;
        st.interval = std::chrono::milliseconds(std::max(1, interval_ms));
        self->monitor(st.controller);
        self->send(st.controller, heartbeat_atom::value, make_report(st));
        self->delayed_send(self, st.interval, tick_atom::value);
      },
      [=](tick_atom) {
        auto& st = self->state;
        if (st.stopping) return;
        self->send(st.controller, heartbeat_atom::value, make_report(st));
        self->delayed_send(self, st.interval, tick_atom::value);
      },
  };
}

} // namespace

caf::actor spawn_node_agent(caf::actor_system& sys, std::shared_ptr<fabric_context> ctx) {
  return sys.spawn(agent_impl, std::move(ctx));
}

} // namespace duet::actors
