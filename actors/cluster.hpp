#pragma once

// The embedded cluster: one process, one CAF actor system, "nodes" as groups of actors with a
// hardware profile each, the real CPU engine executing and KV moving over a real transport
// (in-process by default). It is the completion_service `duet serve` and the tests use:
//
//   duet::actors::cluster_config cfg;
//   cfg.model_path = ".../stories260K.bin";
//   cfg.tokenizer_path = ".../tok512.bin";
//   auto c = duet::actors::make_embedded_cluster(cfg);      // throws std::runtime_error
//   c->submit(request, {on_token, on_done});
//
// Path of one disaggregated request: request actor -> controller placement -> prefill shard
// pipeline (layer ranges, chunked prompt, KV segments sent layer by layer as produced, over the
// transport) -> decode lane (paged KV pool, continuous batch) -> tokens with positions ->
// request actor -> callbacks. Integrated requests run prefill and decode on the decode lane.

#include "actors/completion_service.hpp"
#include "actors/fault_injector.hpp"
#include "actors/placement.hpp"
#include "engine/kv_dtype.hpp"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace prometheus {
class Registry;
} // namespace prometheus

namespace duet::engine {
class tokenizer;
} // namespace duet::engine

namespace duet::actors {

/// Everything an embedded cluster is made of. Defaults suit tests on a 2-core machine.
struct cluster_config {
  // -- model -----------------------------------------------------------------------------------
  std::string model_path;     ///< llama2.c .bin or GGUF
  std::string tokenizer_path; ///< llama2.c tokenizer (empty for GGUF, which carries its own)
  /// K and V element type of every prefill shard and decode lane (engine/kv_dtype.hpp): auto is
  /// f32 for f32 weights, f16 for f16 or q8_0 ones. Multi-process: each `duet node --kv-dtype`
  /// chooses and says so when it joins; the controller refuses nodes that disagree (a decode
  /// lane takes segments of its own type only) and plans with theirs.
  engine::kv_dtype_choice kv_dtype = engine::kv_dtype_choice::automatic;

  // -- shape -----------------------------------------------------------------------------------
  int prefill_nodes = 1;               ///< nodes with the prefill role
  int decode_nodes = 1;                ///< nodes with the decode role
  int prefill_split = 1;               ///< shards per prefill pipeline (0: as profiles fit)
  std::string prefill_profile = "cpu"; ///< profile of prefill nodes (profiles.hpp)
  std::string decode_profile = "cpu";  ///< profile of decode nodes
  /// KV transport: "inproc", "zmq+tcp", "zmq+ipc", "fabric+shm", "fabric+tcp" (each decode
  /// lane listens on an ephemeral address of that kind), or "actor" (KV as CAF messages).
  /// "zmq:tcp", "zmq:ipc", "fabric:shm", "fabric:tcp" are accepted spellings; a full
  /// transport address ("zmq+tcp://10.0.0.5:0") is used as the lane's listen address.
  std::string transport = "inproc";

  // -- placement -------------------------------------------------------------------------------
  placement_mode placement = placement_mode::automatic; ///< forces a mode unless automatic
  placement_policy policy;

  // -- bounds ------------------------------------------------------------------------------------
  int kv_block_tokens = 16;        ///< positions per KV block
  int decode_sequences_max = 16;   ///< full-context sequences a decode lane's pool holds
  int prefill_sequences_max = 4;   ///< full-context sequences a prefill shard's pool holds
  int decode_batch_max = 64;       ///< sequences stepped together
  int prefill_chunk_tokens = 64;   ///< prompt tokens per prefill chunk
  int admission_waiters_max = 256; ///< requests a lane lets wait for KV blocks (then refuses)
  int requests_max = 1024;         ///< requests in flight in the cluster (then refuses)

  // -- threads -----------------------------------------------------------------------------------
  int engine_threads = 1; ///< compute threads per prefill shard / decode lane
  int caf_workers = 2;    ///< CAF scheduler workers (engine work runs on detached actors)

  // -- failure handling ------------------------------------------------------------------------
  int actor_restarts_max = 8;          ///< per actor slot within the window, then it stays dead
  int actor_restart_window_ms = 60000; ///< restarts older than this no longer count
  int request_retries_max = 3;         ///< re-placements of one request, then a clear error
  int kv_timeout_ms = 5000; ///< a lane waits this long for a request's KV, then re-requests
  fault_config faults;      ///< deterministic rules + seeded chaos
  /// Fault injection, a slow decode node: each decode step sleeps this long first (lets a
  /// multi-process test kill a node mid-generation of a tiny model). 0: off.
  int decode_step_delay_ms = 0;
  /// Fault injection, a slow prefill node: each prefill chunk sleeps this long first (lets a
  /// multi-process test kill a node mid-prefill). 0: off.
  int prefill_chunk_delay_ms = 0;

  // -- observability ---------------------------------------------------------------------------
  /// When set: duet_kv_blocks_used / duet_kv_blocks_free{node}, duet_kv_bytes_transferred_total
  /// and duet_kv_transfer_seconds{transport}, duet_actor_restarts_total{kind},
  /// duet_placement_decisions_total{mode}, duet_queue_depth{node}.
  std::shared_ptr<prometheus::Registry> metrics;
};

/// Counters of a running cluster (for tests, `duet bench fabric` and logs).
struct cluster_stats {
  std::uint64_t requests_started = 0;
  std::uint64_t requests_finished = 0;
  std::uint64_t integrated = 0;
  std::uint64_t disaggregated = 0;
  std::uint64_t actor_restarts = 0;
  std::uint64_t request_retries = 0;
  std::uint64_t kv_segments_sent = 0;
  std::uint64_t kv_bytes_sent = 0;
  double kv_send_seconds = 0; ///< time shards spent in transport send() (serialization + credit)
  std::uint64_t kv_segments_rejected = 0; ///< dropped by receivers (corrupt, duplicate, ...)
};

/// The running cluster. Thread-safe; destroying it drains and stops every actor.
class cluster : public completion_service {
public:
  /// The served model's tokenizer (for the gateway's encode / decode).
  virtual const engine::tokenizer& tokenizer() const = 0;
  /// Name of the model (file stem, e.g. "stories260K").
  virtual std::string model_name() const = 0;
  /// The K and V element type its prefill shards and decode lanes store: cluster_config's
  /// kv_dtype resolved for the model (multi-process: the nodes').
  virtual engine::dtype kv_dtype() const = 0;
  /// KV blocks currently held by every live prefill shard and decode lane (0 when idle).
  virtual std::size_t kv_blocks_in_use() const = 0;
  /// The fault injector the actors consult (add rules at run time).
  virtual fault_injector& faults() = 0;
  /// Kills one actor by name ("prefill/<node>/<shard>", "decode/<node>"); false if unknown.
  virtual bool kill_actor(const std::string& name) = 0;
  /// Kills one random live actor of `kind` (seeded); returns its name ("" if none).
  virtual std::string kill_random(actor_kind kind) = 0;
  /// Crashes node `node`: every live prefill shard and decode lane on it is killed at once (the
  /// controller restarts each, as after a host reboot). Returns the names killed (none: no such
  /// node or nothing alive on it).
  virtual std::vector<std::string> crash_node(int node) = 0;
  /// Names of the live prefill shards and decode lanes.
  virtual std::vector<std::string> actor_names() const = 0;
  virtual cluster_stats stats() const = 0;
};

/// Builds and starts an embedded cluster. Throws std::runtime_error with a clear message when
/// the model cannot be loaded or placed (e.g. does not fit the chosen profiles).
std::unique_ptr<cluster> make_embedded_cluster(cluster_config config);

/// "prefill=2,decode=1" (duet serve --local) into the shape fields of `config`; throws
/// std::invalid_argument naming the bad part.
void parse_local_shape(const std::string& text, cluster_config& config);

} // namespace duet::actors
