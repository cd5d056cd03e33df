#include "actors/placement.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <climits>

namespace duet::actors {

caf::expected<std::vector<pipeline_plan>>
plan_prefill_pipelines(const std::vector<node_view>& nodes, const model_footprint& model,
                       int split) {
  std::vector<const node_view*> prefill;
  for (const auto& n : nodes)
    if (n.prefill && n.alive) prefill.push_back(&n);
  if (prefill.empty()) return make_error(fabric_errc::no_capacity, "no live prefill-capable node");
  if (model.n_layers <= 0) return make_error(fabric_errc::bad_request, "model has no layers");
  if (split > model.n_layers)
    return make_error(fabric_errc::bad_request,
                      fmt::format("cannot split {} layers over {} shards", model.n_layers, split));

  std::vector<pipeline_plan> plans;
  std::string last_refusal;
  std::size_t next = 0;
  while (next < prefill.size()) {
    pipeline_plan plan;
    int layer = 0;
    std::size_t used = 0;
    bool failed = false;
    while (layer < model.n_layers) {
      if (next + used >= prefill.size()) {
        failed = true;
        break;
      }
      const node_view& node = *prefill[next + used];
      int remaining = model.n_layers - layer;
      int take = 0;
      if (split > 0) {
        int shards_left = split - int(plan.shards.size());
        take = (remaining + shards_left - 1) / shards_left; // even split, earlier shards +1
        if (auto err = check_fit(node.profile, model, take)) {
          last_refusal = fmt::format("node {}: {}", node.node_id, describe(err));
          failed = true;
          break;
        }
      } else {
        take = std::min(remaining, max_layers_that_fit(node.profile, model));
        if (take == 0) {
          last_refusal =
              fmt::format("node {}: {}", node.node_id, describe(check_fit(node.profile, model, 1)));
          failed = true;
          break;
        }
      }
      plan.shards.push_back({node.node_id, layer, layer + take});
      layer += take;
      ++used;
    }
    if (failed) break;
    plans.push_back(std::move(plan));
    next += used;
  }
  if (plans.empty())
    return make_error(
        fabric_errc::does_not_fit,
        fmt::format("no prefill pipeline can hold the model's {} layers ({})", model.n_layers,
                    last_refusal.empty() ? "not enough prefill nodes" : last_refusal));
  return plans;
}

caf::expected<placement_decision> place_request(const placement_query& query,
                                                const std::vector<node_view>& nodes,
                                                const std::vector<int>& pipeline_depth,
                                                const placement_policy& policy) {
  placement_decision out;
  int best_decode_depth = INT_MAX;
  for (const auto& n : nodes) {
    if (!n.decode || !n.alive) continue;
    // Fewest queued first; ties go to the most free KV, then the lowest id (deterministic).
    bool better = out.decode_node < 0 || n.queue_depth < best_decode_depth ||
                  (n.queue_depth == best_decode_depth &&
                   n.kv_blocks_free > nodes[std::size_t(out.decode_node)].kv_blocks_free);
    if (better) {
      best_decode_depth = n.queue_depth;
      out.decode_node = n.node_id;
    }
  }
  if (out.decode_node < 0) return make_error(fabric_errc::no_capacity, "no live decode node");

  int best_pipeline_depth = INT_MAX;
  for (std::size_t i = 0; i < pipeline_depth.size(); ++i) {
    if (pipeline_depth[i] < 0) continue;
    if (pipeline_depth[i] < best_pipeline_depth) {
      best_pipeline_depth = pipeline_depth[i];
      out.pipeline = int(i);
    }
  }

  switch (query.mode) {
  case placement_mode::integrated:
    out.disaggregated = false;
    out.reason = "forced integrated";
    return out;
  case placement_mode::disaggregated:
    if (out.pipeline < 0)
      return make_error(fabric_errc::no_capacity,
                        "disaggregated placement forced but no prefill pipeline is alive");
    out.disaggregated = true;
    out.reason = "forced disaggregated";
    return out;
  case placement_mode::automatic:
    break;
  }
  if (out.pipeline < 0) {
    out.reason = "no live prefill pipeline";
  } else if (query.prompt_tokens < policy.integrated_prompt_tokens_max) {
    out.reason = fmt::format("prompt of {} tokens is shorter than {}", query.prompt_tokens,
                             policy.integrated_prompt_tokens_max);
  } else if (best_pipeline_depth > best_decode_depth + policy.queue_depth_skew) {
    out.reason = fmt::format("prefill queue {} exceeds decode queue {} by more than {}",
                             best_pipeline_depth, best_decode_depth, policy.queue_depth_skew);
  } else {
    out.disaggregated = true;
    out.reason = "long prompt, prefill path free";
  }
  if (!out.disaggregated) out.pipeline = -1;
  return out;
}

} // namespace duet::actors
