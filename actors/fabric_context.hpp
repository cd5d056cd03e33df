#pragma once

// What every actor of one node group shares: the loaded model (weights are memory-mapped once
// and shared by every runner), the configuration, the fault injector, counters, and the actor
// registry the cluster uses to name and kill actors. Thread-safe where it says so.

#include "actors/cluster.hpp"
#include "actors/fault_injector.hpp"
#include "engine/kv_dtype.hpp"
#include "engine/model_file.hpp"

#include <caf/actor.hpp>
#include <caf/actor_addr.hpp>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace prometheus {
class Counter;
class Gauge;
class Histogram;
} // namespace prometheus

namespace duet::actors {

/// Lock-free counters, summed into cluster_stats.
struct fabric_counters {
  std::atomic<std::uint64_t> requests_started{0};
  std::atomic<std::uint64_t> requests_finished{0};
  std::atomic<std::uint64_t> integrated{0};
  std::atomic<std::uint64_t> disaggregated{0};
  std::atomic<std::uint64_t> actor_restarts{0};
  std::atomic<std::uint64_t> request_retries{0};
  std::atomic<std::uint64_t> kv_segments_sent{0};
  std::atomic<std::uint64_t> kv_bytes_sent{0};
  std::atomic<std::uint64_t> kv_send_ns{0};
  std::atomic<std::uint64_t> kv_segments_rejected{0};
};

/// Prometheus instruments (all null when the cluster has no registry).
struct fabric_metrics {
  prometheus::Counter* kv_bytes = nullptr;
  prometheus::Histogram* kv_transfer_seconds = nullptr;
  prometheus::Counter* restarts_prefill = nullptr;
  prometheus::Counter* restarts_decode = nullptr;
  prometheus::Counter* placed_integrated = nullptr;
  prometheus::Counter* placed_disaggregated = nullptr;
  std::vector<prometheus::Gauge*> kv_blocks_used; ///< [node]
  std::vector<prometheus::Gauge*> kv_blocks_free; ///< [node]
  std::vector<prometheus::Gauge*> queue_depth;    ///< [node]
};

/// One supervised actor: its name, kind, node and current incarnation.
struct actor_entry {
  std::string name; ///< "prefill/<node>/<shard>" or "decode/<node>"
  actor_kind kind = actor_kind::prefill_shard;
  int node = 0;
  caf::actor handle; ///< current incarnation (invalid while dead)
  bool alive = false;
  /// KV blocks held by the current incarnation (published by the actor; 0 when dead).
  std::shared_ptr<std::atomic<std::int64_t>> blocks_used =
      std::make_shared<std::atomic<std::int64_t>>(0);
  std::shared_ptr<std::atomic<std::int64_t>> blocks_free =
      std::make_shared<std::atomic<std::int64_t>>(0);
};

/// Names -> actors. The controller writes it; the cluster reads it (kill, names, KV totals).
class actor_registry {
public:
  void put(const actor_entry& entry);
  void set_handle(const std::string& name, caf::actor handle, bool alive);
  std::vector<actor_entry> snapshot() const;
  std::optional<actor_entry> find(const std::string& name) const;
  /// Actor currently registered under `name` (invalid if none or dead).
  caf::actor handle(const std::string& name) const;
  /// Drops every handle (shutdown: actors hold the context, so the registry must let go of
  /// them or their threads would wait for the last reference forever).
  void clear();

private:
  mutable std::mutex mutex_;
  std::map<std::string, actor_entry> entries_;
};

/// The KV sends a node process's prefill shards made since its agent last reported them to the
/// controller (node_report): the controller's /metrics and stats then count them as if sent
/// there. Off (record() does nothing) except in node processes. Bounded: past max_listed sends
/// between two reports, sends are only summed (bytes and time exact, histogram entries lost).
class kv_send_log {
public:
  static constexpr std::size_t max_listed = 4096;

  struct drained {
    std::vector<double> seconds;      ///< one per listed send
    std::vector<std::uint64_t> bytes; ///< same length
    std::uint64_t unlisted_sends = 0;
    std::uint64_t unlisted_bytes = 0;
    double unlisted_seconds = 0.0;
  };

  void enable();
  void record(double seconds, std::uint64_t bytes);
  /// What was recorded since the last drain (and forgets it).
  drained drain();

private:
  std::atomic<bool> enabled_{false}; ///< read without the lock: record() is per KV segment
  std::mutex mutex_;
  drained pending_;
};

struct fabric_context {
  fabric_context(engine::loaded_model loaded, fault_config faults_config)
      : model(std::move(loaded)), faults(std::move(faults_config)) {}

  cluster_config config;
  engine::loaded_model model;
  std::vector<int> stop_tokens; ///< EOS (+ BOS for llama2.c, as run.c)
  fault_injector faults;
  fabric_counters counters;
  fabric_metrics metrics;
  actor_registry registry;
  kv_send_log send_log;
  std::string transport_label; ///< metrics label
  /// Optional observer of control events ("placed <request> decode_node <n> <mode>",
  /// "node <n> down: <why>", ...); called from actor threads, must be thread-safe.
  std::function<void(const std::string&)> on_event;

  /// The K and V type this process's prefill shards and decode lanes store and its KV links
  /// carry: config.kv_dtype resolved for the model (engine/kv_dtype.hpp).
  engine::dtype kv_type() const {
    return engine::resolve_kv_dtype(config.kv_dtype, *model.weights);
  }
};

/// The prometheus instruments of `registry` for `n_nodes` nodes (no-op when registry is null).
fabric_metrics make_fabric_metrics(const std::shared_ptr<prometheus::Registry>& registry,
                                   const std::string& transport, int n_nodes);

/// Adds seconds to the KV transfer histogram and bytes to the counter (when present).
void observe_kv_transfer(const fabric_metrics& metrics, double seconds, std::uint64_t bytes);

/// Kills every live prefill shard and decode lane the registry places on `node` except
/// `except` (the caller, which quits by itself): a node crash. Returns the names killed.
std::vector<std::string> kill_node_actors(fabric_context& ctx, int node,
                                          const caf::actor_addr& except = {});

/// Sets node `node`'s KV block gauges to the sum over the live actors the registry places there
/// (a node may run prefill shards and a decode lane: each publishes its own pool's atomics,
/// then calls this).
void publish_node_kv(fabric_context& ctx, int node);

} // namespace duet::actors
