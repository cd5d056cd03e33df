#pragma once

// A prefill shard: runs a contiguous layer range [first_layer, last_layer) of prompts, chunk by
// chunk, on the real CPU engine. For every chunk and every layer it sends that layer's K/V for
// the chunk's positions to the request's decode lane as soon as the layer is done (layer-wise
// streaming: the transfer of layer l overlaps the compute of layer l+1), then hands the chunk's
// hidden states to the next shard, or, as the last shard of the last chunk, samples the first
// token. Runs detached (its own thread): engine calls block, CAF's workers stay free.
//
// Idempotent by (request, epoch, chunk): chunk 0 of a new epoch discards whatever the shard
// held for the request; chunks of an older epoch are ignored. A restarted shard holds nothing,
// so the request re-runs all of its chunks under a new epoch.

#include "actors/fabric_context.hpp"

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>

#include <memory>

namespace duet::actors {

struct prefill_shard_spec {
  int node = 0;
  int shard_index = 0; ///< position in its pipeline
  int first_layer = 0;
  int last_layer = 0;
  std::shared_ptr<std::atomic<std::int64_t>> blocks_used; ///< published for kv_blocks_in_use
  std::shared_ptr<std::atomic<std::int64_t>> blocks_free;
};

/// Spawns a detached prefill shard. Engine setup errors make it quit with engine_failure.
caf::actor spawn_prefill_shard(caf::actor_system& sys, std::shared_ptr<fabric_context> ctx,
                               prefill_shard_spec spec);

} // namespace duet::actors
