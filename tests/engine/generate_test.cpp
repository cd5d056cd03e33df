// Greedy generation on stories260K: llama2.c's documented sample, and token-for-token equality
// with an independent scalar transcription of run.c's forward() (reference_model.hpp).
#include "engine_helpers.hpp"
#include "reference_model.hpp"

#include <catch2/catch.hpp>

using namespace duet;

namespace {

std::vector<int> reference_greedy(const std::vector<int>& prompt, int steps) {
  static test::reference_model ref(test::model_file("stories260K.bin"));
  return ref.generate_greedy(prompt, steps);
}

} // namespace

TEST_CASE("greedy generation from BOS on stories260K prints llama2.c's documented sample") {
  const auto& w = test::stories260k();
  const auto& tok = test::tok512();
  engine::runner r(w);
  engine::kv_cache kv(test::full_cache(w, 1));
  auto prompt = tok.encode("", true);
  REQUIRE(prompt == std::vector<int>{1});
  auto out = test::engine_greedy(r, kv, 7, prompt, 256);
  std::string text = tok.decode_all(out, prompt.back());
  INFO(text);
  CHECK(text.rfind("Once upon a time, there was a little girl named Lily. She loved to play "
                   "outside in the park.",
                   0) == 0);
}

TEST_CASE("greedy generation equals the scalar run.c reference token for token") {
  const auto& w = test::stories260k();
  const auto& tok = test::tok512();
  int threads = GENERATE(1, 2);
  engine::runner r(w, engine::runner_options{threads, 64});
  const std::vector<std::pair<std::string, int>> cases = {
      {"", 512},
      {"Once upon a time", 200},
      {"Tom and his dog went to the beach. They", 300},
      {"The little bird could not fly, so", 128},
      {"Lily saw a big red ball in the garden and she wanted to play with it. "
       "She ran to her mom and asked",
       256},
  };
  engine::seq_id seq = 1;
  for (const auto& [text, steps] : cases) {
    engine::kv_cache kv(test::full_cache(w, 1));
    auto prompt = tok.encode(text, true);
    auto expected = reference_greedy(prompt, steps);
    auto got = test::engine_greedy(r, kv, seq++, prompt, steps);
    INFO("prompt \"" << text << "\", steps " << steps << ", threads " << threads);
    REQUIRE(got == expected);
  }
}
