#pragma once

// The multi-process deployment's control plane: what a node process (`duet node`) and the
// controller process (`duet controller`) say to each other over CAF's middleman, the node agent
// that spawns a node's prefill shards and decode lane on the controller's request, and the
// registration of every fabric message type (the same names in every process).
//
//   node: listens for KV (kv_pump), remote_actor(controller) -> registrar
//   node agent --join(node_hello)--> registrar            (reply: the node id)
//   cluster --start(controller, node id, interval)--> node agent   (all nodes joined)
//   node agent --heartbeat(node_report)--> controller      (every interval)
//   controller --spawn(slot_request)--> node agent         (reply: the actor, local to the node)
//
// The actors themselves (request, controller, shards, lanes) are the embedded cluster's: only
// where they are spawned differs.

#include "actors/fabric_context.hpp"

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/atom.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace duet::actors {

/// node agent -> registrar: join the cluster (node_hello follows); reply: the node id.
using join_atom = caf::atom_constant<caf::atom("join")>;
/// cluster -> node agent: every node joined; heartbeat the controller from now on.
using start_atom = caf::atom_constant<caf::atom("start")>;
/// node agent -> controller: this node is alive (node_report follows).
using heartbeat_atom = caf::atom_constant<caf::atom("heartbeat")>;
/// controller -> node agent: spawn a shard or lane here (slot_request follows).
using spawn_atom = caf::atom_constant<caf::atom("spawnslot")>;
/// timers: node agent heartbeat, controller membership check.
using tick_atom = caf::atom_constant<caf::atom("tick")>;

/// What a node tells the controller when it joins.
struct node_hello {
  std::int32_t pid = 0;   ///< the node process (for logs and tests)
  std::string profile;    ///< hardware profile name (profiles.hpp)
  bool prefill = false;   ///< role
  bool decode = false;    ///< role
  std::string kv_address; ///< decode nodes: the KV receiver's concrete address
  caf::actor agent;       ///< the node agent (spawns this node's actors)
  /// The K and V element type the node's shards and lane store ("f32", "f16"; `duet node
  /// --kv-dtype` resolved against its model): the nodes of a cluster must agree.
  std::string kv_dtype;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, node_hello& x) {
  return f(caf::meta::type_name("node_hello"), x.pid, x.profile, x.prefill, x.decode, x.kv_address,
           x.agent, x.kv_dtype);
}

/// controller -> node agent: one actor slot to (re)spawn on the node.
struct slot_request {
  std::string name;      ///< "prefill/<node>/<shard>" or "decode/<node>"
  bool decode = false;   ///< a decode lane (else a prefill shard)
  std::int32_t node = 0; ///< the node id the actor reports as its own
  std::int32_t shard_index = 0;
  std::int32_t first_layer = 0;
  std::int32_t last_layer = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, slot_request& x) {
  return f(caf::meta::type_name("slot_request"), x.name, x.decode, x.node, x.shard_index,
           x.first_layer, x.last_layer);
}

/// One actor's KV pool as its node sees it (in node_report).
struct actor_load {
  std::string name; ///< the slot name, as in slot_request
  std::int64_t blocks_used = 0;
  std::int64_t blocks_free = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, actor_load& x) {
  return f(caf::meta::type_name("actor_load"), x.name, x.blocks_used, x.blocks_free);
}

/// node agent -> controller with every heartbeat: the node is alive, what its live actors hold,
/// and the KV sends its prefill shards made since the last report (kv_send_log), so the
/// controller's metrics and stats show the nodes' figures as the embedded cluster's do.
struct node_report {
  std::int32_t node = -1;
  std::vector<actor_load> actors;
  std::vector<double> kv_send_seconds;      ///< one per listed send
  std::vector<std::uint64_t> kv_send_bytes; ///< same length
  std::uint64_t unlisted_sends = 0;         ///< beyond kv_send_log::max_listed: sums only
  std::uint64_t unlisted_bytes = 0;
  double unlisted_seconds = 0.0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, node_report& x) {
  return f(caf::meta::type_name("node_report"), x.node, x.actors, x.kv_send_seconds,
           x.kv_send_bytes, x.unlisted_sends, x.unlisted_bytes, x.unlisted_seconds);
}

/// Registers every fabric message type under its name (call on the config of every process
/// that talks to others: the controller's and every node's).
void add_fabric_message_types(caf::actor_system_config& cfg);

/// Spawns a node's agent. It spawns shards and lanes on request (entering them in
/// ctx->registry, where the node's kv_pump finds its lane), heartbeats the controller once
/// started, and when the controller goes away it stops every actor it spawned and quits.
caf::actor spawn_node_agent(caf::actor_system& sys, std::shared_ptr<fabric_context> ctx);

} // namespace duet::actors
