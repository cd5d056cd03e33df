#pragma once

// A decode lane: owns a paged KV pool over all layers and a continuous batch. Sequences are
// admitted when KV blocks for their whole budget can be reserved (else they wait, boundedly,
// and are refused past the bound); they start once their prompt's KV has arrived (every layer,
// every position) and the first token is known; each step runs all started sequences together
// through decode_batch and sends every sequence its next token with its position. Integrated
// requests run their prompt here too (chunk by chunk, interleaved with decode steps).
//
// KV for a request whose request actor is gone is released: the lane monitors each request
// actor it serves (the in-process lease); a sequence whose KV does not arrive within
// kv_timeout_ms is dropped and the request told (it re-runs its prefill under a new epoch).
// Runs detached (its own thread).

#include "actors/fabric_context.hpp"

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>

#include <memory>

namespace duet::actors {

struct decode_lane_spec {
  int node = 0;
  std::shared_ptr<std::atomic<std::int64_t>> blocks_used;
  std::shared_ptr<std::atomic<std::int64_t>> blocks_free;
};

caf::actor spawn_decode_lane(caf::actor_system& sys, std::shared_ptr<fabric_context> ctx,
                             decode_lane_spec spec);

} // namespace duet::actors
