#pragma once

// Built-in fault injection, seeded so a run replays. Two kinds of faults:
//
//  - Triggers: rules the actors consult at fixed points of their work ("crash the prefill shard
//    when it starts chunk 1", "crash the decode lane after it has produced 5 tokens", "corrupt
//    the 3rd KV segment"). Deterministic by construction: tests use these.
//  - Chaos: per-segment probabilities (drop / delay / corrupt) drawn from one seeded RNG, and
//    on-demand kills (a named actor, a random actor of a kind, every actor of a node) that the
//    cluster executes. `duet chaos` drives these.
//
// Thread-safe: prefill shards and decode lanes run on their own threads and ask concurrently.

#include <cstdint>
#include <mutex>
#include <random>
#include <string>
#include <vector>

namespace duet::actors {

/// The kinds of actors a fault can target.
enum class actor_kind : std::uint8_t { prefill_shard, decode_lane };

std::string to_string(actor_kind kind);

/// One deterministic rule. `remaining` counts how many more times it fires (then it is spent).
struct fault_rule {
  enum class action : std::uint8_t { crash_actor, drop_kv, delay_kv, corrupt_kv };
  action what = action::crash_actor;
  actor_kind target = actor_kind::prefill_shard;
  int node = -1;         ///< only actors of this node (-1: any)
  int at_chunk = -1;     ///< crash a prefill shard as it starts this chunk index of a request
  int after_tokens = -1; ///< crash a decode lane once it has produced this many tokens in all
  int at_segment = -1;   ///< KV faults: the n-th segment (0-based) sent by the cluster
  int delay_ms = 0;      ///< delay_kv: how long
  int remaining = 1;
  /// crash_actor: the whole node goes down with the actor (every live prefill shard and decode
  /// lane of its node at once, as when the host dies; their supervisor restarts them).
  bool whole_node = false;
};

/// A crash rule's verdict for an actor at one of its check points.
struct crash_verdict {
  bool crash = false;
  bool whole_node = false; ///< take the node's other actors down too
  explicit operator bool() const { return crash; }
};

/// Per-segment probabilities for chaos runs.
struct kv_chaos {
  double drop_probability = 0;
  double corrupt_probability = 0;
  double delay_probability = 0;
  int delay_ms = 0;
};

/// What the fault configuration of a cluster holds.
struct fault_config {
  std::uint64_t seed = 0; ///< RNG seed; printed by tests and `duet chaos`
  std::vector<fault_rule> rules;
  kv_chaos chaos;
};

/// What to do with one KV segment.
struct kv_fault {
  bool drop = false;
  bool corrupt = false;
  int delay_ms = 0;
};

class fault_injector {
public:
  explicit fault_injector(fault_config config = {});

  /// Adds a rule at run time (tests, `duet chaos`).
  void add_rule(const fault_rule& rule);

  /// A prefill shard on `node` is starting chunk `chunk` of a request: crash now?
  crash_verdict crash_prefill_at_chunk(int node, int chunk);

  /// A decode lane on `node` has produced `tokens_total` tokens since it started: crash now?
  crash_verdict crash_decode_after_tokens(int node, std::int64_t tokens_total);

  /// The fault for the next KV segment a shard sends (counts segments cluster-wide).
  kv_fault next_segment();

  /// A uniform index in [0, n) from the seeded RNG (random victim selection).
  std::size_t pick(std::size_t n);

  std::uint64_t seed() const { return config_.seed; }
  /// Faults fired so far (crashes + KV faults).
  std::uint64_t fired() const;

private:
  mutable std::mutex mutex_;
  fault_config config_;
  std::mt19937_64 rng_;
  std::int64_t segments_ = 0;
  std::uint64_t fired_ = 0;
};

} // namespace duet::actors
