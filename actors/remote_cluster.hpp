#pragma once

// The multi-process deployment shape: `duet controller` and `duet node` (apps/cmd_controller.cpp,
// apps/cmd_node.cpp) are thin shells over these two functions.
//
//   auto c = make_controller_cluster(cfg, {.port = 0, .nodes = 3, .on_listening = print});
//   c->submit(request, callbacks);        // the same cluster interface as embedded
//
//   run_node(cfg, {.controller_host = "127.0.0.1", .controller_port = p, .decode = true,
//                  .transport = "zmq+tcp"});   // blocks while the controller is there
//
// The controller process runs the request actors and the controller (the embedded cluster's
// code); node processes run the prefill shards and decode lanes the controller asks their agent
// for. Control messages go over CAF's middleman; KV goes over the chosen transport, straight
// from a prefill node to the decode node's receiver, whose address the node announced on join.

#include "actors/cluster.hpp"

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace duet::actors {

/// How the controller process listens and watches its nodes.
struct controller_options {
  std::string listen_host = "127.0.0.1";
  std::uint16_t port = 0; ///< 0: an ephemeral port, reported by on_listening
  int nodes = 2;          ///< nodes that must join before the cluster serves
  int join_timeout_ms = 30000;
  int heartbeat_interval_ms = 200; ///< how often node agents report
  int heartbeat_timeout_ms = 2000; ///< silence after which a node is dead
  /// Called once the middleman listens (with the concrete port), before waiting for nodes.
  std::function<void(std::uint16_t port)> on_listening;
  /// Control events: "node <n> joined pid <p> ...", placement, node down, re-placement.
  std::function<void(const std::string&)> on_event;
  /// Polled (every few ms) while waiting for the nodes: true gives up waiting, as a join
  /// timeout does (e.g. `duet serve` got SIGINT while nodes were still to come).
  std::function<bool()> stop_requested;
};

/// Publishes the registrar, waits for `options.nodes` nodes to join (bounded by
/// join_timeout_ms and stop_requested), plans the pipelines over them as the embedded cluster
/// does, and starts the controller. Throws std::runtime_error (model, placement, join timeout,
/// stopped).
std::unique_ptr<cluster> make_controller_cluster(cluster_config config, controller_options options);

/// What a node process is and where it joins.
struct node_options {
  std::string controller_host = "127.0.0.1";
  std::uint16_t controller_port = 0;
  std::string profile = "cpu";
  bool prefill = false;
  bool decode = false;
  std::function<void(const std::string&)> on_event; ///< "joined as node <n>", ...
};

/// Runs a node: binds its KV receiver (decode role, transport from config.transport), joins
/// the controller, serves the actors it is asked for, and returns when the controller is gone.
/// Throws std::runtime_error when it cannot load the model, listen or join.
void run_node(cluster_config config, node_options options);

} // namespace duet::actors
