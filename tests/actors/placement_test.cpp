// Placement, profiles and errors: pure functions, stated exactly.
#include "actors/errors.hpp"
#include "actors/fault_injector.hpp"
#include "actors/placement.hpp"
#include "actors/profiles.hpp"

#include <catch2/catch.hpp>

using namespace duet::actors;

namespace {

node_view make_node(int id, const std::string& profile, bool prefill, bool decode, int depth = 0) {
  node_view n;
  n.node_id = id;
  n.profile = *find_profile(profile);
  n.prefill = prefill;
  n.decode = decode;
  n.queue_depth = depth;
  return n;
}

/// A Llama-2-70B-like footprint in bf16: 140 GB of weights over 80 layers, KV 2.6 MB/token
/// (80 layers x 2 x 8 kv heads x 128 x 2 bytes = 327,680 bytes... scaled to a 4k budget).
model_footprint big_model() {
  model_footprint m;
  m.weight_bytes_total = 140e9;
  m.n_layers = 80;
  m.kv_bytes_per_token = 327680;
  m.kv_budget_tokens = 16 * 4096;
  return m;
}

} // namespace

TEST_CASE("fabric errors carry their code and context text across caf::error") {
  auto err = make_error(fabric_errc::kv_corrupt, "segment layer 3 of request 7 epoch 1");
  CHECK(fabric_code(err) == fabric_errc::kv_corrupt);
  CHECK(error_context(err) == "segment layer 3 of request 7 epoch 1");
  CHECK(describe(err) == "kv_corrupt: segment layer 3 of request 7 epoch 1");
  CHECK(to_service_error(fabric_errc::overloaded) == service_error::overloaded);
  CHECK(to_service_error(fabric_errc::prompt_too_long) == service_error::prompt_too_long);
  CHECK(to_service_error(fabric_errc::actor_crashed) == service_error::internal);
  CHECK(fabric_code(caf::error{}) == fabric_errc::none);
}

TEST_CASE("the built-in profiles carry published figures and a source") {
  for (const auto& name : profile_names()) {
    auto p = find_profile(name);
    REQUIRE(p);
    CHECK(p->name == name);
    CHECK(p->peak_flops > 0);
    CHECK(p->memory_bytes > 0);
    CHECK(p->memory_bandwidth_bps > 0);
    CHECK(p->link_bandwidth_bps > 0);
    CHECK_FALSE(p->source.empty());
  }
  CHECK(find_profile("wse3")->memory_bytes == 44e9);
  CHECK_FALSE(find_profile("tpu9"));
}

TEST_CASE("a model whose weights and KV budget exceed a wse3 is refused with both sides named") {
  auto wse3 = *find_profile("wse3");
  auto model = big_model();
  auto err = check_fit(wse3, model, model.n_layers);
  REQUIRE(err);
  CHECK(fabric_code(err) == fabric_errc::does_not_fit);
  CHECK(error_context(err).find("wse3 node holds 44.00 GB") != std::string::npos);
  // Fewer layers fit: 44 GB / (1.75 GB weights + 0.27 GB KV per layer) = 21 layers.
  CHECK(max_layers_that_fit(wse3, model) == 21);
}

TEST_CASE("a model too big for one prefill node is split into layer ranges over several") {
  std::vector<node_view> nodes;
  for (int i = 0; i < 4; ++i) nodes.push_back(make_node(i, "wse3", true, false));
  auto plans = plan_prefill_pipelines(nodes, big_model(), 0);
  REQUIRE(plans);
  REQUIRE(plans->size() == 1);
  const auto& shards = plans->front().shards;
  REQUIRE(shards.size() == 4);
  CHECK(shards[0].layer_begin == 0);
  CHECK(shards[0].layer_end == 21);
  CHECK(shards[3].layer_end == 80);
  for (std::size_t i = 1; i < shards.size(); ++i)
    CHECK(shards[i].layer_begin == shards[i - 1].layer_end);

  // Three wse3 nodes cannot hold 80 layers: refused, saying why.
  nodes.pop_back();
  auto none = plan_prefill_pipelines(nodes, big_model(), 0);
  REQUIRE_FALSE(none);
  CHECK(fabric_code(none.error()) == fabric_errc::does_not_fit);
}

TEST_CASE("a forced split divides the layers evenly, earlier shards taking the remainder") {
  std::vector<node_view> nodes{make_node(0, "cpu", true, false), make_node(1, "cpu", true, false)};
  model_footprint tiny{1e6, 5, 1000, 512};
  auto plans = plan_prefill_pipelines(nodes, tiny, 2);
  REQUIRE(plans);
  REQUIRE(plans->size() == 1);
  REQUIRE(plans->front().shards.size() == 2);
  CHECK(plans->front().shards[0].layer_end == 3);
  CHECK(plans->front().shards[1].layer_begin == 3);
  CHECK(plans->front().shards[1].layer_end == 5);
  auto two = plan_prefill_pipelines(nodes, tiny, 1);
  REQUIRE(two);
  CHECK(two->size() == 2);
}

TEST_CASE("per request, short prompts go integrated and long ones disaggregated") {
  std::vector<node_view> nodes{make_node(0, "trainium2", true, false),
                               make_node(1, "wse3", false, true)};
  placement_policy policy;
  policy.integrated_prompt_tokens_max = 8;
  std::vector<int> depth{0};
  auto short_prompt = place_request({4, 16, placement_mode::automatic}, nodes, depth, policy);
  REQUIRE(short_prompt);
  CHECK_FALSE(short_prompt->disaggregated);
  CHECK(short_prompt->decode_node == 1);
  auto long_prompt = place_request({100, 16, placement_mode::automatic}, nodes, depth, policy);
  REQUIRE(long_prompt);
  CHECK(long_prompt->disaggregated);
  CHECK(long_prompt->pipeline == 0);
  // A forced mode wins over the policy.
  auto forced = place_request({4, 16, placement_mode::disaggregated}, nodes, depth, policy);
  REQUIRE(forced);
  CHECK(forced->disaggregated);
  auto forced_int = place_request({100, 16, placement_mode::integrated}, nodes, depth, policy);
  REQUIRE(forced_int);
  CHECK_FALSE(forced_int->disaggregated);
}

TEST_CASE("a backed-up prefill side sends requests integrated, and a dead pipeline is skipped") {
  std::vector<node_view> nodes{make_node(0, "cpu", true, false), make_node(1, "cpu", true, false),
                               make_node(2, "cpu", false, true, 1)};
  placement_policy policy;
  policy.queue_depth_skew = 4;
  auto busy = place_request({100, 16, placement_mode::automatic}, nodes, {10, 12}, policy);
  REQUIRE(busy);
  CHECK_FALSE(busy->disaggregated);
  auto one_dead = place_request({100, 16, placement_mode::automatic}, nodes, {-1, 3}, policy);
  REQUIRE(one_dead);
  CHECK(one_dead->disaggregated);
  CHECK(one_dead->pipeline == 1);
}

TEST_CASE("the least-loaded decode node wins and no live decode node means no_capacity") {
  std::vector<node_view> nodes{make_node(0, "cpu", false, true, 5),
                               make_node(1, "cpu", false, true, 2)};
  auto d = place_request({4, 4, placement_mode::automatic}, nodes, {}, {});
  REQUIRE(d);
  CHECK(d->decode_node == 1);
  for (auto& n : nodes) n.alive = false;
  auto none = place_request({4, 4, placement_mode::automatic}, nodes, {}, {});
  REQUIRE_FALSE(none);
  CHECK(fabric_code(none.error()) == fabric_errc::no_capacity);
  auto forced = place_request({4, 4, placement_mode::disaggregated},
                              {make_node(0, "cpu", false, true)}, {}, {});
  REQUIRE_FALSE(forced);
}

TEST_CASE("fault rules fire exactly as often as they say and chaos replays with its seed") {
  fault_config cfg;
  cfg.seed = 42;
  fault_rule crash;
  crash.target = actor_kind::prefill_shard;
  crash.at_chunk = 1;
  cfg.rules.push_back(crash);
  fault_rule corrupt;
  corrupt.what = fault_rule::action::corrupt_kv;
  corrupt.at_segment = 2;
  cfg.rules.push_back(corrupt);
  fault_rule node_crash;
  node_crash.target = actor_kind::decode_lane;
  node_crash.node = 3;
  node_crash.after_tokens = 10;
  node_crash.whole_node = true;
  cfg.rules.push_back(node_crash);
  fault_injector f{cfg};
  CHECK_FALSE(f.crash_prefill_at_chunk(0, 0));
  auto shard = f.crash_prefill_at_chunk(0, 1);
  CHECK(shard);
  CHECK_FALSE(shard.whole_node);
  CHECK_FALSE(f.crash_prefill_at_chunk(0, 1));
  CHECK_FALSE(f.crash_decode_after_tokens(3, 9));
  CHECK_FALSE(f.crash_decode_after_tokens(2, 10)); // another node
  auto lane = f.crash_decode_after_tokens(3, 10);
  CHECK(lane);
  CHECK(lane.whole_node);
  CHECK_FALSE(f.crash_decode_after_tokens(3, 11)); // spent
  CHECK_FALSE(f.next_segment().corrupt);
  CHECK_FALSE(f.next_segment().corrupt);
  CHECK(f.next_segment().corrupt);
  CHECK(f.fired() == 3);

  fault_config chaos;
  chaos.seed = 7;
  chaos.chaos.drop_probability = 0.3;
  fault_injector a{chaos}, b{chaos};
  for (int i = 0; i < 100; ++i) CHECK(a.next_segment().drop == b.next_segment().drop);
}
