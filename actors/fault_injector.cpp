#include "actors/fault_injector.hpp"

namespace duet::actors {

std::string to_string(actor_kind kind) {
  switch (kind) {
  case actor_kind::prefill_shard:
    return "prefill";
  case actor_kind::decode_lane:
    return "decode";
  }
  return "?";
}

fault_injector::fault_injector(fault_config config)
    : config_(std::move(config)), rng_(config_.seed) {}

void fault_injector::add_rule(const fault_rule& rule) {
  std::lock_guard guard{mutex_};
  config_.rules.push_back(rule);
}

crash_verdict fault_injector::crash_prefill_at_chunk(int node, int chunk) {
  std::lock_guard guard{mutex_};
  for (auto& r : config_.rules) {
    if (r.remaining <= 0 || r.what != fault_rule::action::crash_actor ||
        r.target != actor_kind::prefill_shard || r.at_chunk != chunk)
      continue;
    if (r.node >= 0 && r.node != node) continue;
    --r.remaining;
    ++fired_;
    return {true, r.whole_node};
  }
  return {};
}

crash_verdict fault_injector::crash_decode_after_tokens(int node, std::int64_t tokens_total) {
  std::lock_guard guard{mutex_};
  for (auto& r : config_.rules) {
    if (r.remaining <= 0 || r.what != fault_rule::action::crash_actor ||
        r.target != actor_kind::decode_lane || r.after_tokens < 0 || tokens_total < r.after_tokens)
      continue;
    if (r.node >= 0 && r.node != node) continue;
    --r.remaining;
    ++fired_;
    return {true, r.whole_node};
  }
  return {};
}

kv_fault fault_injector::next_segment() {
  std::lock_guard guard{mutex_};
  kv_fault out;
  auto index = segments_++;
  for (auto& r : config_.rules) {
    if (r.remaining <= 0 || r.at_segment != index) continue;
    switch (r.what) {
    case fault_rule::action::drop_kv:
      out.drop = true;
      break;
    case fault_rule::action::corrupt_kv:
      out.corrupt = true;
      break;
    case fault_rule::action::delay_kv:
      out.delay_ms = r.delay_ms;
      break;
    case fault_rule::action::crash_actor:
      continue;
    }
    --r.remaining;
    ++fired_;
  }
  const auto& c = config_.chaos;
  if (c.drop_probability > 0 || c.corrupt_probability > 0 || c.delay_probability > 0) {
    std::uniform_real_distribution<double> u{0.0, 1.0};
    // Always draw all three so one probability's value never shifts another's sequence.
    double d = u(rng_), k = u(rng_), l = u(rng_);
    if (d < c.drop_probability) out.drop = true, ++fired_;
    if (k < c.corrupt_probability) out.corrupt = true, ++fired_;
    if (l < c.delay_probability) out.delay_ms = c.delay_ms, ++fired_;
  }
  return out;
}

std::size_t fault_injector::pick(std::size_t n) {
  std::lock_guard guard{mutex_};
  if (n == 0) return 0;
  return std::uniform_int_distribution<std::size_t>{0, n - 1}(rng_);
}

std::uint64_t fault_injector::fired() const {
  std::lock_guard guard{mutex_};
  return fired_;
}

} // namespace duet::actors
