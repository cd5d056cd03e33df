#pragma once

// Placement: which nodes run a request's prefill and decode, and whether the request is served
// integrated (one node, no KV transfer) or disaggregated (prefill pipeline -> KV -> decode lane).
//
// Two decisions, both pure functions of the data given (so tests can state them exactly):
//  1. At cluster start, `plan_prefill_pipelines` splits the model's layers over prefill nodes:
//     a node holds as many layers as fit its profile (weights + KV budget), so a model too big
//     for one node becomes a pipeline of layer-range shards over several.
//  2. Per request, `place_request` picks the least-loaded pipeline and decode node and the mode.
//
// The per-request mode policy (overridable per request and by --placement):
//  - forced integrated / disaggregated wins when the path exists;
//  - a prompt shorter than `integrated_prompt_tokens_max` goes integrated: its prefill is a
//    few decode steps' worth of work, so moving its KV costs more than the interference saved;
//  - when the prefill side is backed up (shortest prefill queue deeper than the decode node's
//    queue by more than `queue_depth_skew`), go integrated rather than wait behind it;
//  - otherwise disaggregated, which keeps long prefills off the decode lanes (TTFT and TPOT do
//    not interfere).

#include "actors/completion_service.hpp"
#include "actors/errors.hpp"
#include "actors/profiles.hpp"

#include <caf/expected.hpp>

#include <string>
#include <vector>

namespace duet::actors {

/// What placement knows about one node.
struct node_view {
  int node_id = 0;
  hardware_profile profile;
  bool prefill = false; ///< hosts prefill shards
  bool decode = false;  ///< hosts a decode lane
  bool alive = true;
  int queue_depth = 0;    ///< requests queued or running on this node's actors
  int kv_blocks_free = 0; ///< decode nodes: free blocks in the lane's pool
};

/// A contiguous layer range on one node.
struct shard_assignment {
  int node_id = 0;
  int layer_begin = 0; ///< first layer
  int layer_end = 0;   ///< one past the last layer
};

/// Prefill shards that together cover every layer, in layer order.
struct pipeline_plan {
  std::vector<shard_assignment> shards;
};

/// Splits the layers over prefill nodes. `split` > 0 forces that many shards per pipeline
/// (tests use it to split a small model); 0 uses the fewest shards that fit each node's profile.
/// Nodes are taken in order, `split` (or as many as needed) per pipeline; leftovers that cannot
/// form a whole pipeline stay idle. Fails with does_not_fit when no pipeline can be formed.
caf::expected<std::vector<pipeline_plan>>
plan_prefill_pipelines(const std::vector<node_view>& nodes, const model_footprint& model,
                       int split);

/// The tunables of the per-request policy (see the header comment).
struct placement_policy {
  int integrated_prompt_tokens_max = 8;
  int queue_depth_skew = 8;
};

/// One request's shape as placement sees it.
struct placement_query {
  int prompt_tokens = 0;
  int max_tokens = 0;
  placement_mode mode = placement_mode::automatic;
};

/// Where one request runs.
struct placement_decision {
  bool disaggregated = false;
  int pipeline = -1;    ///< index into the pipelines (disaggregated only)
  int decode_node = -1; ///< the decode lane's node (both modes)
  std::string reason;   ///< why this mode, for logs and metrics
};

/// The per-request decision. `pipeline_depth[i]` is the queue depth of pipeline i, -1 if it
/// has a dead shard. Fails with no_capacity when no decode node is alive.
caf::expected<placement_decision> place_request(const placement_query& query,
                                                const std::vector<node_view>& nodes,
                                                const std::vector<int>& pipeline_depth,
                                                const placement_policy& policy);

} // namespace duet::actors
