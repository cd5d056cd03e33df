// Split prefill over layer ranges + KV export/import into another engine, and batched decode:
// both must give exactly the tokens of one plain instance.
#include "engine/kv_export.hpp"
#include "engine/model_file.hpp"
#include "engine/synth.hpp"
#include "engine_helpers.hpp"
#include "gguf_test_support.hpp"

#include <catch2/catch.hpp>

using namespace duet;

namespace {

constexpr int steps = 160;

/// Prefill `prompt` with the layers split at `cuts` (each range its own runner and cache that
/// holds only its layers, prompt fed in chunks of 8), export every layer's KV in two segments,
/// import into a fresh runner + cache, and decode greedily there.
std::vector<int> split_generate(const std::vector<int>& prompt, const std::vector<int>& cuts,
                                engine::dtype kv_type) {
  const auto& w = test::stories260k();
  const auto& c = w.config;
  const int n = static_cast<int>(prompt.size());
  const engine::seq_id seq = 42;
  std::vector<float> x(static_cast<std::size_t>(n * c.dim));
  std::vector<float> logits(static_cast<std::size_t>(c.vocab_size));

  engine::runner decode_runner(w, engine::runner_options{1, 16});
  engine::kv_cache decode_kv(test::full_cache(w, 1, kv_type));
  REQUIRE(decode_kv.seq_add(seq));
  REQUIRE(decode_kv.seq_reserve(seq, n));

  for (std::size_t r = 0; r + 1 < cuts.size(); ++r) {
    int first = cuts[r], last = cuts[r + 1];
    engine::runner shard(w, engine::runner_options{1, 8});
    auto kc = engine::kv_cache_config::for_model(c, first, last, 0, kv_type);
    kc.blocks_max = kc.blocks_for(1);
    engine::kv_cache kv(kc);
    REQUIRE(kv.seq_add(seq));
    REQUIRE(kv.seq_reserve(seq, n));
    if (r == 0) shard.embed(prompt, x);
    shard.forward_layers(kv, seq, 0, n, first, last, x);
    if (last == c.n_layers)
      shard.logits(std::span<const float>(x).subspan(static_cast<std::size_t>((n - 1) * c.dim)),
                   logits);
    for (int l = first; l < last; ++l) {
      int mid = n / 2;
      for (auto [b, e] : {std::pair{0, mid}, std::pair{mid, n}}) {
        auto meta = engine::kv_segment_for(kv, l, b, e);
        std::vector<std::byte> bytes(engine::kv_segment_bytes(meta));
        engine::kv_export(kv, seq, meta, bytes);
        engine::kv_import(decode_kv, seq, meta, bytes);
      }
    }
  }
  REQUIRE(decode_kv.seq_length(seq) == n);
  std::vector<int> out(prompt.begin() + 1, prompt.end());
  test::continue_greedy(decode_runner, decode_kv, seq, logits, n - 1, steps, out);
  return out;
}

} // namespace

TEST_CASE("prefill split over 2 and 3 layer ranges with KV moved to another engine decodes "
          "the same tokens") {
  const auto& w = test::stories260k();
  const auto& tok = test::tok512();
  auto kv_type = GENERATE(engine::dtype::f32, engine::dtype::f16);
  for (const std::string text : {"Once upon a time, a little fox", "Sam had a red car. He"}) {
    auto prompt = tok.encode(text, true);
    engine::runner single(w);
    engine::kv_cache kv(test::full_cache(w, 1, kv_type));
    auto expected = test::engine_greedy(single, kv, 1, prompt, steps);
    INFO("prompt \"" << text << "\", kv " << engine::dtype_name(kv_type));
    CHECK(split_generate(prompt, {0, 2, 5}, kv_type) == expected);
    CHECK(split_generate(prompt, {0, 1, 3, 5}, kv_type) == expected);
    CHECK(split_generate(prompt, {0, 5}, kv_type) == expected);
  }
}

/// A tiny random-weight q8_0 model (engine/synth.hpp), written once per test run: the batched
/// test runs its q8_0 kernels (with their activations quantized once per matmul input and split
/// over threads) through the same checks as the f32 stories260K.
const engine::loaded_model& tiny_q8_0() {
  static test::temp_dir dir;
  static const engine::loaded_model m = [] {
    const std::string path = dir.file("tiny-q8_0.gguf");
    engine::write_synth_model(path, *engine::find_synth_shape("tiny"), engine::dtype::q8_0,
                              engine::synth_options{2, 0.02f}, [](const std::string&) {});
    return engine::open_model(path);
  }();
  return m;
}

TEST_CASE("batched decode of many sequences gives each the tokens it gets alone") {
  const bool q8 = GENERATE(false, true);
  const auto& w = q8 ? *tiny_q8_0().weights : test::stories260k();
  const auto& tok = q8 ? tiny_q8_0().tok : test::tok512();
  const int steps = std::min(::steps, w.config.seq_len);
  const std::vector<std::string> texts = {
      "", "Once upon a time", "The dog", "Mia and Tom", "It was a sunny day. The birds", "A"};
  auto kv_type = GENERATE(engine::dtype::f32, engine::dtype::f16);
  const int threads = GENERATE(1, 2);
  INFO((q8 ? "tiny q8_0" : "stories260K f32")
       << ", kv " << engine::dtype_name(kv_type) << ", threads " << threads);
  // Alone.
  std::vector<std::vector<int>> alone;
  for (const auto& t : texts) {
    engine::runner r(w);
    engine::kv_cache kv(test::full_cache(w, 1, kv_type));
    alone.push_back(test::engine_greedy(r, kv, 9, tok.encode(t, true), steps));
  }
  // Together: tokens_max 4 < 6 sequences, so batches are chunked too; the last two sequences
  // join late (continuous batching) and finished ones leave the batch.
  engine::runner r(w, engine::runner_options{threads, 4});
  engine::kv_cache kv(test::full_cache(w, static_cast<int>(texts.size()), kv_type));
  struct live {
    engine::seq_id id;
    int pos;
    int next;
    bool done;
    std::vector<int> out;
  };
  std::vector<live> seqs;
  std::vector<float> logits(static_cast<std::size_t>(w.config.vocab_size));
  auto admit = [&](std::size_t i) {
    auto prompt = tok.encode(texts[i], true);
    auto id = static_cast<engine::seq_id>(100 + i);
    REQUIRE(kv.seq_add(id));
    REQUIRE(kv.seq_reserve(id, static_cast<int>(prompt.size())));
    r.prefill(kv, id, 0, prompt, logits);
    live s{id, static_cast<int>(prompt.size()) - 1, engine::sample_argmax(logits), false,
           std::vector<int>(prompt.begin() + 1, prompt.end())};
    seqs.push_back(std::move(s));
  };
  for (std::size_t i = 0; i + 2 < texts.size(); ++i) admit(i);
  std::vector<engine::decode_item> items;
  std::vector<std::size_t> which;
  std::vector<float> batch_logits;
  for (int step = 0;; ++step) {
    if (step == 5) {
      admit(texts.size() - 2);
      admit(texts.size() - 1);
    }
    items.clear();
    which.clear();
    for (std::size_t i = 0; i < seqs.size(); ++i) {
      auto& s = seqs[i];
      if (s.done) continue;
      if (s.next == 1) { // BOS ends a story, as run.c
        s.done = true;
        continue;
      }
      s.out.push_back(s.next);
      if (s.pos + 1 >= steps) {
        s.done = true;
        continue;
      }
      REQUIRE(kv.seq_reserve(s.id, s.pos + 2));
      items.push_back({s.id, s.next, s.pos + 1});
      which.push_back(i);
    }
    if (items.empty()) break;
    batch_logits.resize(items.size() * logits.size());
    r.decode_batch(kv, items, batch_logits);
    for (std::size_t k = 0; k < items.size(); ++k) {
      auto& s = seqs[which[k]];
      ++s.pos;
      s.next = engine::sample_argmax(
          std::span<const float>(batch_logits).subspan(k * logits.size(), logits.size()));
    }
  }
  REQUIRE(seqs.size() == texts.size());
  for (std::size_t i = 0; i < texts.size(); ++i) {
    INFO("sequence " << i << " \"" << texts[i] << "\"");
    CHECK(seqs[i].out == alone[i]);
    CHECK(seqs[i].out.size() >= 8); // not an empty comparison: every sequence generates
  }
}
