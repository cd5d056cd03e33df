// The embedded cluster end to end: real actors, the real CPU engine, real transports; every
// path must give exactly the tokens of one plain engine run (contract 1 of DESIGN.md).
#include "tests/actors/fabric_support.hpp"

#include "actors/kv_link.hpp"

#include "engine/kv_dtype.hpp"
#include "engine/synth.hpp"
#include "engine/tokenizer.hpp"
#include "tests/engine/gguf_test_support.hpp"

#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <chrono>
#include <thread>

using namespace duet;
using namespace duet::test;

namespace {

std::vector<int> story_prompt(actors::cluster& c) {
  return c.tokenizer().encode("Once upon a time, there was a little girl named Lily who", true);
}

void check_one_request(actors::cluster_config cfg, actors::placement_mode mode) {
  auto cluster = actors::make_embedded_cluster(cfg);
  auto prompt = story_prompt(*cluster);
  auto expected = reference_tokens(prompt, 40);
  collector col;
  cluster->submit(make_request("r1", prompt, 40, mode), col.callbacks());
  auto out = col.wait();
  check_fault_free(out, prompt, expected);
  CHECK(out.result.disaggregated == (mode == actors::placement_mode::disaggregated));
  CHECK(settled_kv_blocks(*cluster) == 0);
}

} // namespace

TEST_CASE("one disaggregated request over CAF messages gives the single-engine greedy tokens") {
  auto cfg = stories_config();
  cfg.transport = "actor";
  check_one_request(cfg, actors::placement_mode::disaggregated);
}

TEST_CASE("one integrated request gives the single-engine greedy tokens") {
  auto cfg = stories_config();
  cfg.transport = "actor";
  check_one_request(cfg, actors::placement_mode::integrated);
}

TEST_CASE("one disaggregated request with prefill split over 2 shards gives the same tokens") {
  auto cfg = stories_config();
  cfg.transport = "actor";
  cfg.prefill_nodes = 2;
  cfg.prefill_split = 2;
  check_one_request(cfg, actors::placement_mode::disaggregated);
}

TEST_CASE("one disaggregated request over the inproc transport gives the same tokens") {
  auto cfg = stories_config();
  cfg.transport = "inproc";
  check_one_request(cfg, actors::placement_mode::disaggregated);
}

TEST_CASE("one disaggregated request over zmq tcp gives the same tokens") {
  auto cfg = stories_config();
  cfg.transport = "zmq+tcp";
  check_one_request(cfg, actors::placement_mode::disaggregated);
}

TEST_CASE("one disaggregated request over libfabric shm gives the same tokens") {
  auto cfg = stories_config();
  cfg.transport = "fabric+shm";
  check_one_request(cfg, actors::placement_mode::disaggregated);
}

TEST_CASE("prefill split over 2 shards over libfabric shm gives the same tokens") {
  auto cfg = stories_config();
  cfg.transport = "fabric+shm";
  cfg.prefill_nodes = 2;
  cfg.prefill_split = 2;
  check_one_request(cfg, actors::placement_mode::disaggregated);
}

TEST_CASE("a q8_0 model's K and V are f16 by default, integrated and disaggregated, with the "
          "tokens of one engine with f16 K and V") {
  // duet synth's tiny shape (2 layers) in q8_0: --kv-dtype auto gives it f16 K and V, which
  // the prefill shards, the segments on the wire and the decode lane must all use.
  temp_dir dir;
  const std::string path = dir.file("tiny-q8_0.gguf");
  engine::write_synth_model(path, *engine::find_synth_shape("tiny"), engine::dtype::q8_0,
                            engine::synth_options{7, 0.02f});
  const auto model = engine::open_model(path);
  const auto& mc = model.weights->config;
  REQUIRE(engine::resolve_kv_dtype(engine::kv_dtype_choice::automatic, *model.weights) ==
          engine::dtype::f16);
  const auto prompt = model.tok.encode("Once upon a time, in a land far away", true);
  const auto expected = reference_tokens(model, prompt, 24, engine::dtype::f16);
  REQUIRE(expected.size() >= 8); // this seed's model does not stop at once

  for (const char* transport : {"actor", "zmq+tcp", "fabric+shm"}) {
    for (auto mode : {actors::placement_mode::integrated, actors::placement_mode::disaggregated}) {
      INFO("transport " << transport << ", "
                        << (mode == actors::placement_mode::integrated ? "integrated"
                                                                       : "disaggregated"));
      if (mode == actors::placement_mode::integrated && std::string{transport} != "actor")
        continue; // integrated requests move no KV: one transport covers them
      auto cfg = stories_config();
      cfg.model_path = path;
      cfg.tokenizer_path.clear();
      cfg.transport = transport;
      cfg.prefill_nodes = 2;
      cfg.prefill_split = 2; // one layer per shard: each sends its own layer's segments
      auto cluster = actors::make_embedded_cluster(cfg);
      CHECK(cluster->kv_dtype() == engine::dtype::f16);
      collector col;
      cluster->submit(make_request("q8", prompt, 24, mode), col.callbacks());
      check_fault_free(col.wait(), prompt, expected);
      // Each prompt position's K and V of every layer crossed once, 2 bytes an element (f32
      // would be twice this).
      const auto kv_bytes =
          mode == actors::placement_mode::integrated
              ? 0
              : prompt.size() * std::size_t(mc.n_layers) * 2 * std::size_t(mc.kv_dim()) * 2;
      CHECK(cluster->stats().kv_bytes_sent == kv_bytes);
      CHECK(settled_kv_blocks(*cluster) == 0);
    }
  }
}

TEST_CASE("a cluster with a metrics registry exports KV, transfer, restart, placement and queue "
          "metrics") {
  auto cfg = stories_config();
  cfg.metrics = std::make_shared<prometheus::Registry>();
  actors::fault_rule crash;
  crash.target = actors::actor_kind::decode_lane;
  crash.after_tokens = 3;
  cfg.faults.rules.push_back(crash);
  auto cluster = actors::make_embedded_cluster(cfg);
  auto prompt = story_prompt(*cluster);
  collector col;
  cluster->submit(make_request("m1", prompt, 8), col.callbacks());
  auto out = col.wait();
  CHECK(out.result.error == actors::service_error::none);
  CHECK(settled_kv_blocks(*cluster) == 0);
  const std::vector<std::string> lines{"duet_kv_blocks_used{node=\"1\"} 0",
                                       "duet_kv_blocks_free{node=\"1\"}",
                                       "duet_kv_bytes_transferred_total{transport=\"inproc\"}",
                                       "duet_kv_transfer_seconds_count{transport=\"inproc\"}",
                                       "duet_actor_restarts_total{kind=\"decode_lane\"} 1",
                                       "duet_placement_decisions_total{mode=\"disaggregated\"} 2",
                                       "duet_queue_depth{node=\"0\"} 0"};
  // The request actor tells the controller it finished after the client's on_done: the queue
  // depth gauges may lag it a moment, so wait (bounded) for every line.
  std::string text;
  for (int i = 0; i < 200; ++i) {
    text = prometheus::TextSerializer{}.Serialize(cfg.metrics->Collect());
    if (std::all_of(lines.begin(), lines.end(),
                    [&](const std::string& l) { return text.find(l) != std::string::npos; }))
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  for (const auto& line : lines) {
    INFO(line);
    CHECK(text.find(line) != std::string::npos);
  }
}

TEST_CASE("a whole-context prompt in one KV segment per layer fits the KV link's sized window") {
  // KV links size their window to the model and its K and V type (kv_link_options): the
  // largest segment, a whole context's K and V of one layer, must still cross, over both kinds
  // of window, in f32 and in f16.
  const auto kv = GENERATE(engine::dtype::f32, engine::dtype::f16);
  INFO("K and V " << engine::dtype_name(kv));
  const auto& c = stories_model().weights->config;
  const auto o = actors::kv_link_options(c, kv);
  const std::size_t whole = std::size_t(c.seq_len) * 2 * engine::row_bytes(kv, c.kv_dim());
  CHECK(o.segment_bytes_max >= whole);
  CHECK(o.window_bytes >= o.segment_bytes_max);
  CHECK(o.window_bytes <= std::size_t{128} << 20);
  for (const char* transport : {"fabric+shm", "zmq+tcp"}) {
    INFO(transport);
    auto cfg = stories_config();
    cfg.transport = transport;
    cfg.kv_dtype =
        kv == engine::dtype::f16 ? engine::kv_dtype_choice::f16 : engine::kv_dtype_choice::f32;
    cfg.prefill_chunk_tokens = 0; // the whole prompt in one segment per layer
    auto cluster = actors::make_embedded_cluster(cfg);
    std::vector<int> prompt{1};
    for (int i = 1; i < c.seq_len - 8; ++i) prompt.push_back(3 + (i * 37) % (c.vocab_size - 3));
    auto expected = reference_tokens(stories_model(), prompt, 4, kv, false);
    collector col;
    auto r = make_request("long", prompt, 4, actors::placement_mode::disaggregated);
    r.stop_at_eos = false;
    cluster->submit(r, col.callbacks());
    auto out = col.wait();
    INFO(out.result.error_message);
    CHECK(out.tokens == expected);
    CHECK(settled_kv_blocks(*cluster) == 0);
  }
}

TEST_CASE("KV link windows grow with the model and its K and V type and never below one "
          "segment") {
  engine::model_config big;
  big.dim = 4096;
  big.n_heads = 32;
  big.n_kv_heads = 4;  // K and V widths of 512
  big.seq_len = 65536; // one layer's K and V: 256 MiB
  const auto o = actors::kv_link_options(big);
  CHECK(o.segment_bytes_max == std::size_t{256} << 20);
  CHECK(o.window_bytes == o.segment_bytes_max);
  engine::model_config small = big;
  small.seq_len = 16;
  const auto s = actors::kv_link_options(small);
  CHECK(s.window_bytes == std::size_t{4} << 20);
  CHECK(s.segment_bytes_max == std::size_t{64} << 10);
  // f16 K and V: half the segment, and half the window where it is 8 segments (stories110M's
  // shape: 6 MiB segments and a 48 MiB window in f32).
  engine::model_config mid;
  mid.dim = 768;
  mid.n_heads = 12;
  mid.n_kv_heads = 12;
  mid.seq_len = 1024;
  const auto f32 = actors::kv_link_options(mid, engine::dtype::f32);
  const auto f16 = actors::kv_link_options(mid, engine::dtype::f16);
  CHECK(f32.segment_bytes_max == std::size_t{6} << 20);
  CHECK(f32.window_bytes == std::size_t{48} << 20);
  CHECK(f16.segment_bytes_max == std::size_t{3} << 20);
  CHECK(f16.window_bytes == std::size_t{24} << 20);
}
