// Sampler (argmax ties, seeded determinism, top-k/top-p support) and stop conditions.
#include "engine/sampler.hpp"

#include <catch2/catch.hpp>

#include <set>
#include <vector>

using namespace duet::engine;

TEST_CASE("greedy picks the largest logit and the lowest index on ties") {
  std::vector<float> l = {0.1f, 3.0f, -1.0f, 3.0f};
  CHECK(sample_argmax(l) == 1);
  sampler s(sampler_config{}, 4);
  CHECK(s.sample(l) == 1);
  CHECK(sample_argmax(std::span<const float>()) == -1);
}

TEST_CASE("sampling with the same seed draws the same tokens") {
  auto draw = [](sampler_config c) {
    sampler s(c, 50);
    std::vector<int> out;
    for (int i = 0; i < 200; ++i) {
      std::vector<float> l(50);
      for (int j = 0; j < 50; ++j)
        l[static_cast<std::size_t>(j)] = static_cast<float>((j * 7 + i) % 13) * 0.3f;
      out.push_back(s.sample(l));
    }
    return out;
  };
  for (auto c : {sampler_config{1.0f, 1.0f, 0, 5}, sampler_config{0.8f, 0.9f, 0, 5},
                 sampler_config{1.2f, 1.0f, 5, 5}, sampler_config{1.0f, 0.5f, 10, 5}}) {
    auto a = draw(c), b = draw(c);
    CHECK(a == b);
    c.seed = 6;
    CHECK(draw(c) != a);
    CHECK(std::set<int>(a.begin(), a.end()).size() > 1);
  }
}

TEST_CASE("top-k keeps only the k most likely tokens and top-k 1 is greedy") {
  std::vector<float> base = {1.0f, 5.0f, 4.9f, 0.0f, 4.8f, -2.0f};
  for (std::uint64_t seed = 1; seed < 40; ++seed) {
    auto l = base;
    sampler k1(sampler_config{1.0f, 1.0f, 1, seed}, 6);
    CHECK(k1.sample(l) == 1);
    l = base;
    sampler k3(sampler_config{2.0f, 1.0f, 3, seed}, 6);
    int t = k3.sample(l);
    CHECK((t == 1 || t == 2 || t == 4));
    l = base;
    sampler p(sampler_config{1.0f, 0.3f, 0, seed}, 6); // nucleus holds token 1 only
    CHECK(p.sample(l) == 1);
  }
}

TEST_CASE("stop conditions end on stop tokens, stop strings and max tokens") {
  stop_checker a(stop_config{{2}, {}, 0});
  CHECK(a.add(5, "x") == stop_reason::none);
  CHECK(a.add(2, "</s>") == stop_reason::stop_token);
  CHECK(a.take_ready() == "x");

  stop_checker m(stop_config{{}, {}, 3});
  CHECK(m.add(1, "a") == stop_reason::none);
  CHECK(m.add(1, "b") == stop_reason::none);
  CHECK(m.add(1, "c") == stop_reason::max_tokens);
  CHECK(m.take_ready() == "abc");

  // A stop string spanning tokens: the tail that may start it is held back, then cut.
  stop_checker s(stop_config{{}, {"The End"}, 0});
  CHECK(s.add(1, "happy. T") == stop_reason::none);
  CHECK(s.take_ready() == "happy. ");
  CHECK(s.add(1, "he") == stop_reason::none);
  CHECK(s.take_ready() == "");
  CHECK(s.add(1, " En") == stop_reason::none);
  CHECK(s.add(1, "d!") == stop_reason::stop_string);
  CHECK(s.take_ready() == "");
  CHECK(s.generated() == 4);

  stop_checker n(stop_config{{}, {"xyz"}, 0});
  CHECK(n.add(1, "ab x") == stop_reason::none);
  CHECK(n.take_ready() == "ab ");
  CHECK(n.add(1, "a") == stop_reason::none);
  CHECK(n.take_ready() == "xa");
}
