#pragma once

// The request actor: one per request. It validates the request, asks the controller where to
// run it, reserves the decode lane's KV, starts the prefill (pipeline or integrated), relays
// tokens to the client's callbacks strictly in position order, enforces the deadline, and
// survives failures: when an actor it depends on dies, or a KV transfer is lost, it re-places
// the request under a new epoch and re-runs the prefill over prompt + tokens already delivered
// (recompute), so the client sees every position exactly once. Retries are bounded; after
// them the request ends with a clear error. Exactly one on_done, always last.

#include "actors/fabric_context.hpp"

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>

#include <functional>
#include <memory>

namespace duet::actors {

/// Spawns the request actor. `on_exit` runs once when it is done (the cluster forgets it).
caf::actor spawn_request_actor(caf::actor_system& sys, std::shared_ptr<fabric_context> ctx,
                               caf::actor controller, std::uint64_t id, completion_request request,
                               completion_callbacks callbacks, std::function<void()> on_exit);

} // namespace duet::actors
