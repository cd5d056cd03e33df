#include "actors/fabric_context.hpp"

#include <caf/send.hpp>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

namespace duet::actors {

void actor_registry::put(const actor_entry& entry) {
  std::lock_guard guard{mutex_};
  entries_[entry.name] = entry;
}

void actor_registry::set_handle(const std::string& name, caf::actor handle, bool alive) {
  std::lock_guard guard{mutex_};
  auto it = entries_.find(name);
  if (it == entries_.end()) return;
  it->second.handle = std::move(handle);
  it->second.alive = alive;
}

std::vector<actor_entry> actor_registry::snapshot() const {
  std::lock_guard guard{mutex_};
  std::vector<actor_entry> out;
  for (const auto& [name, entry] : entries_) out.push_back(entry);
  return out;
}

std::optional<actor_entry> actor_registry::find(const std::string& name) const {
  std::lock_guard guard{mutex_};
  auto it = entries_.find(name);
  if (it == entries_.end()) return std::nullopt;
  return it->second;
}

caf::actor actor_registry::handle(const std::string& name) const {
  std::lock_guard guard{mutex_};
  auto it = entries_.find(name);
  if (it == entries_.end() || !it->second.alive) return {};
  return it->second.handle;
}

void actor_registry::clear() {
  std::lock_guard guard{mutex_};
  entries_.clear();
}

fabric_metrics make_fabric_metrics(const std::shared_ptr<prometheus::Registry>& registry,
                                   const std::string& transport, int n_nodes) {
  fabric_metrics m;
  if (!registry) return m;
  auto& bytes = prometheus::BuildCounter()
                    .Name("duet_kv_bytes_transferred_total")
                    .Help("KV segment payload bytes sent from prefill shards to decode lanes")
                    .Register(*registry);
  m.kv_bytes = &bytes.Add({{"transport", transport}});
  auto& seconds = prometheus::BuildHistogram()
                      .Name("duet_kv_transfer_seconds")
                      .Help("Time a prefill shard spent handing one KV segment to the transport")
                      .Register(*registry);
  m.kv_transfer_seconds = &seconds.Add(
      {{"transport", transport}},
      prometheus::Histogram::BucketBoundaries{1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0});
  auto& restarts = prometheus::BuildCounter()
                       .Name("duet_actor_restarts_total")
                       .Help("Actors restarted by their supervisor")
                       .Register(*registry);
  m.restarts_prefill = &restarts.Add({{"kind", "prefill_shard"}});
  m.restarts_decode = &restarts.Add({{"kind", "decode_lane"}});
  auto& placed = prometheus::BuildCounter()
                     .Name("duet_placement_decisions_total")
                     .Help("Requests placed, by mode")
                     .Register(*registry);
  m.placed_integrated = &placed.Add({{"mode", "integrated"}});
  m.placed_disaggregated = &placed.Add({{"mode", "disaggregated"}});
  auto& used = prometheus::BuildGauge()
                   .Name("duet_kv_blocks_used")
                   .Help("KV blocks held, per node")
                   .Register(*registry);
  auto& free = prometheus::BuildGauge()
                   .Name("duet_kv_blocks_free")
                   .Help("KV blocks free, per node")
                   .Register(*registry);
  auto& depth = prometheus::BuildGauge()
                    .Name("duet_queue_depth")
                    .Help("Requests placed on a node and not yet finished")
                    .Register(*registry);
  for (int n = 0; n < n_nodes; ++n) {
    auto label = std::to_string(n);
    m.kv_blocks_used.push_back(&used.Add({{"node", label}}));
    m.kv_blocks_free.push_back(&free.Add({{"node", label}}));
    m.queue_depth.push_back(&depth.Add({{"node", label}}));
  }
  return m;
}

void observe_kv_transfer(const fabric_metrics& metrics, double seconds, std::uint64_t bytes) {
  if (metrics.kv_bytes != nullptr) metrics.kv_bytes->Increment(double(bytes));
  if (metrics.kv_transfer_seconds != nullptr) metrics.kv_transfer_seconds->Observe(seconds);
}

std::vector<std::string> kill_node_actors(fabric_context& ctx, int node,
                                          const caf::actor_addr& except) {
  std::vector<std::string> killed;
  for (const auto& e : ctx.registry.snapshot()) {
    if (!e.alive || e.node != node || !e.handle || e.handle.address() == except) continue;
    caf::anon_send_exit(e.handle, caf::exit_reason::kill);
    killed.push_back(e.name);
  }
  return killed;
}

void publish_node_kv(fabric_context& ctx, int node) {
  if (node < 0 || std::size_t(node) >= ctx.metrics.kv_blocks_used.size()) return;
  std::int64_t used = 0, free = 0;
  for (const auto& e : ctx.registry.snapshot())
    if (e.alive && e.node == node) {
      used += e.blocks_used->load();
      free += e.blocks_free->load();
    }
  ctx.metrics.kv_blocks_used[std::size_t(node)]->Set(double(used));
  ctx.metrics.kv_blocks_free[std::size_t(node)]->Set(double(free));
}

void kv_send_log::enable() {
  enabled_.store(true);
}

void kv_send_log::record(double seconds, std::uint64_t bytes) {
  if (!enabled_.load(std::memory_order_relaxed)) return;
  std::lock_guard guard{mutex_};
  if (pending_.seconds.size() < max_listed) {
    pending_.seconds.push_back(seconds);
    pending_.bytes.push_back(bytes);
  } else {
    ++pending_.unlisted_sends;
    pending_.unlisted_bytes += bytes;
    pending_.unlisted_seconds += seconds;
  }
}

kv_send_log::drained kv_send_log::drain() {
  std::lock_guard guard{mutex_};
  drained out = std::move(pending_);
  pending_ = drained{};
  return out;
}

} // namespace duet::actors
