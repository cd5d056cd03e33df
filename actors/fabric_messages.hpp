#pragma once

// The messages between the fabric's actors, one comment each. Plain structs with inspect()
// so CAF can copy them locally and serialize them between nodes; atoms name the simple ones.
//
//   request actor --place--> controller --placement--> request actor
//   request actor --open_seq--> decode lane (reply: ok once KV blocks are reserved)
//   request actor --prefill_job--> first prefill shard --prefill_chunk--> next shard ...
//   prefill shard --KV segment (transport)--> decode lane
//   last prefill shard --token_msg (from_prefill)--> request actor --start_decode--> decode lane
//   decode lane --token_msg--> request actor;  request actor --release--> lane and shards

#include "actors/completion_service.hpp"
#include "messages/kv_segment.hpp"

#include <caf/actor.hpp>
#include <caf/actor_addr.hpp>
#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/atom.hpp>
#include <caf/error.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace duet::transport {
struct segment;
} // namespace duet::transport

namespace duet::actors {

// -- atoms -------------------------------------------------------------------------------------

/// request -> controller: place a request (placement_query fields follow).
using place_atom = caf::atom_constant<caf::atom("place")>;
/// request -> controller: the request ended (load accounting).
using finished_atom = caf::atom_constant<caf::atom("finished")>;
/// decode lane -> itself: run one continuous-batch step.
using step_atom = caf::atom_constant<caf::atom("step")>;
/// request -> lane / shards: free everything held for a request.
using release_atom = caf::atom_constant<caf::atom("release")>;
/// decode lane reply to open_seq: blocks reserved.
using ok_atom = caf::atom_constant<caf::atom("ok")>;
/// request -> itself: the deadline passed.
using deadline_atom = caf::atom_constant<caf::atom("deadline")>;
/// cluster -> request: the client went away.
using cancel_atom = caf::atom_constant<caf::atom("cancel")>;
/// lane -> itself: check that a request's KV arrived in time.
using kv_check_atom = caf::atom_constant<caf::atom("kvcheck")>;
/// request -> itself: try placement again after a back-off.
using retry_atom = caf::atom_constant<caf::atom("retry")>;
/// integrated prefill -> lane itself: run the next chunk.
using ichunk_atom = caf::atom_constant<caf::atom("ichunk")>;

// -- payloads ----------------------------------------------------------------------------------

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, sampling_params& x) {
  return f(caf::meta::type_name("sampling_params"), x.temperature, x.top_p, x.top_k, x.seed);
}

/// controller -> request: where the request runs.
struct placement_reply {
  bool disaggregated = false;
  int decode_node = -1;
  caf::actor lane;                ///< the decode lane
  std::string kv_address;         ///< the lane's transport address ("" = KV as CAF messages)
  std::vector<caf::actor> shards; ///< prefill pipeline in layer order (disaggregated only)
  std::vector<int> shard_nodes;   ///< node of each shard
  std::string reason;             ///< why this mode
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, placement_reply& x) {
  return f(caf::meta::type_name("placement_reply"), x.disaggregated, x.decode_node, x.lane,
           x.kv_address, x.shards, x.shard_nodes, x.reason);
}

/// request -> lane: reserve KV blocks for a sequence and remember how to decode it.
struct open_seq {
  std::uint64_t request = 0;
  std::uint32_t epoch = 0;
  int reserve_tokens = 0; ///< positions to reserve (prompt + max_tokens)
  int last_pos = 0;       ///< the last position to produce
  std::vector<int> stop_tokens;
  sampling_params sampling;
  caf::actor request_actor; ///< where tokens go
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, open_seq& x) {
  return f(caf::meta::type_name("open_seq"), x.request, x.epoch, x.reserve_tokens, x.last_pos,
           x.stop_tokens, x.sampling, x.request_actor);
}

/// Where one request's prefill output goes; travels with every chunk.
struct prefill_route {
  std::uint64_t request = 0;
  std::uint32_t epoch = 0;
  int total_tokens = 0; ///< tokens of the (re)computed prompt
  sampling_params sampling;
  caf::actor request_actor;       ///< receives the first token and errors
  std::vector<caf::actor> shards; ///< the pipeline, in layer order
  caf::actor lane;                ///< the decode lane (KV destination)
  std::string kv_address;         ///< the lane's transport address ("" = CAF messages)
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, prefill_route& x) {
  return f(caf::meta::type_name("prefill_route"), x.request, x.epoch, x.total_tokens, x.sampling,
           x.request_actor, x.shards, x.lane, x.kv_address);
}

/// request -> first shard: run this whole prompt in chunks of chunk_tokens.
struct prefill_job {
  prefill_route route;
  std::vector<int> tokens;
  int chunk_tokens = 64;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, prefill_job& x) {
  return f(caf::meta::type_name("prefill_job"), x.route, x.tokens, x.chunk_tokens);
}

/// shard i -> shard i+1: one chunk's hidden states after shard i's layers.
struct prefill_chunk {
  prefill_route route;
  int shard_index = 0; ///< the receiving shard's index in route.shards
  int chunk = 0;       ///< chunk index (idempotency key with request and epoch)
  int pos0 = 0;        ///< first position of the chunk
  int n_tokens = 0;
  bool last = false;    ///< the prompt's last chunk
  std::vector<float> x; ///< [n_tokens][dim]
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, prefill_chunk& x) {
  return f(caf::meta::type_name("prefill_chunk"), x.route, x.shard_index, x.chunk, x.pos0,
           x.n_tokens, x.last, x.x);
}

/// request -> lane: run the prompt here (integrated), then decode.
struct integrated_job {
  std::uint64_t request = 0;
  std::uint32_t epoch = 0;
  std::vector<int> tokens;
  int chunk_tokens = 64;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, integrated_job& x) {
  return f(caf::meta::type_name("integrated_job"), x.request, x.epoch, x.tokens, x.chunk_tokens);
}

/// shard / lane -> request: the token at `position` (positions are contiguous per request).
struct token_msg {
  std::uint64_t request = 0;
  std::uint32_t epoch = 0;
  int position = 0;
  int token = 0;
  bool from_prefill = false; ///< the first token, produced by the last prefill shard
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, token_msg& x) {
  return f(caf::meta::type_name("token_msg"), x.request, x.epoch, x.position, x.token,
           x.from_prefill);
}

/// request -> lane: decoding starts with `token` at `position` once KV [0, position) is in.
struct start_decode {
  std::uint64_t request = 0;
  std::uint32_t epoch = 0;
  int position = 0;
  int token = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, start_decode& x) {
  return f(caf::meta::type_name("start_decode"), x.request, x.epoch, x.position, x.token);
}

/// shard / lane -> request: work for (request, epoch) failed; the request decides to retry.
struct work_failed {
  std::uint64_t request = 0;
  std::uint32_t epoch = 0;
  caf::error reason;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, work_failed& x) {
  return f(caf::meta::type_name("work_failed"), x.request, x.epoch, x.reason);
}

/// transport pump / shard -> lane: one KV segment arrived (local only: shares the payload).
struct kv_arrived {
  std::shared_ptr<transport::segment> segment;
};

/// controller <- request: the query of place_atom.
struct place_query {
  std::uint64_t request = 0;
  int prompt_tokens = 0;
  int max_tokens = 0;
  std::uint8_t mode = 0;      ///< placement_mode
  int avoid_decode_node = -1; ///< a node that just failed this request (-1: none)
  /// An actor the request saw die: the controller restarts its slot now if it has not yet
  /// (down messages reach monitors in no guaranteed order), so no dead handle is handed out.
  caf::actor_addr dead;
  std::uint32_t epoch = 0; ///< the request's epoch being placed (a node's death fails it)
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, place_query& x) {
  return f(caf::meta::type_name("place_query"), x.request, x.prompt_tokens, x.max_tokens, x.mode,
           x.avoid_decode_node, x.dead, x.epoch);
}

} // namespace duet::actors

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(duet::actors::kv_arrived)
