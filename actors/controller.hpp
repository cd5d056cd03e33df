#pragma once

// The controller: the cluster's top supervisor. It spawns every prefill shard and decode lane
// (a slot per actor, named "prefill/<node>/<shard>" and "decode/<node>"), monitors them and
// restarts a slot whose actor dies (up to actor_restarts_max times; then the slot stays dead
// and placement avoids it), answers placement queries with the policy of placement.hpp, and
// keeps the per-node queue depths placement reads.
//
// Multi-process (node_spec::agent set): a slot is spawned by asking its node's agent, and the
// controller watches node membership: a node is dead when CAF reports its agent down (the
// connection broke: SIGKILL, crash, network) or its heartbeats stop for heartbeat_timeout_ms.
// A dead node's decode lane stays dead (its requests re-place onto live lanes); each of its
// prefill shards is re-spawned on the live prefill-capable node with the fewest shards.
// A node process that joins later (join_atom, forwarded by the registrar) takes the place of a
// dead node with the same profile and roles: it gets that node's id, and the slots still on
// that id (its decode lane, shards that found no live prefill node) are spawned on it.

#include "actors/fabric_context.hpp"
#include "actors/placement.hpp"

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>

#include <memory>
#include <vector>

namespace duet::actors {

/// One node of the embedded cluster as the controller builds it.
struct node_spec {
  int node_id = 0;
  hardware_profile profile;
  bool prefill = false;
  bool decode = false;
  std::string kv_address; ///< decode nodes: where KV for this node's lane goes ("" = CAF)
  std::string kv_dtype;   ///< multi-process: the node's K and V type (node_hello); "" embedded
  /// Multi-process: the node process's agent, which spawns this node's actors on request
  /// (remote_node.hpp). Invalid: the actors are spawned in this process (embedded).
  caf::actor agent;
};

struct controller_spec {
  std::vector<node_spec> nodes;
  std::vector<pipeline_plan> pipelines;
  /// Multi-process: a node whose agent sent no heartbeat for this long is declared dead
  /// (as when CAF reports its agent down): its actors are re-placed on live nodes. 0: off.
  int heartbeat_timeout_ms = 0;
  /// Multi-process: the interval a node that joins later is told to heartbeat at.
  int heartbeat_interval_ms = 200;
};

/// Spawns the controller and, through it, every shard and lane of `spec`.
caf::actor spawn_controller(caf::actor_system& sys, std::shared_ptr<fabric_context> ctx,
                            controller_spec spec);

/// Name of a decode lane's slot.
std::string decode_lane_name(int node);
/// Name of a prefill shard's slot.
std::string prefill_shard_name(int node, int shard_index);

} // namespace duet::actors
