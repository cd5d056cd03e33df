// The tokenizer against a plain transcription of run.c's encode() (linear piece lookup, no
// shared code), round trips, and byte fallback.
#include "engine_helpers.hpp"
#include "tests/support/seed.hpp"

#include <catch2/catch.hpp>

#include <cstdio>
#include <random>

using namespace duet;

namespace {

/// run.c encode(text, bos=1, eos=0), written out plainly over the tokenizer's pieces.
std::vector<int> reference_encode(const engine::tokenizer& t, const std::string& text) {
  auto lookup = [&](const std::string& s) {
    for (int i = 0; i < t.vocab_size(); ++i)
      if (t.piece(i) == s) return i;
    return -1;
  };
  std::vector<int> tokens{1};
  if (!text.empty()) tokens.push_back(lookup(" "));
  std::string buf;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if ((text[i] & 0xC0) != 0x80) buf.clear();
    buf += text[i];
    char next = i + 1 < text.size() ? text[i + 1] : '\0';
    if ((next & 0xC0) == 0x80 && buf.size() < 4) continue;
    int id = lookup(buf);
    if (id != -1) {
      tokens.push_back(id);
    } else {
      for (char c : buf) tokens.push_back(static_cast<unsigned char>(c) + 3);
    }
    buf.clear();
  }
  for (;;) {
    float best_score = -1e10f;
    int best_id = -1, best_idx = -1;
    for (std::size_t i = 0; i + 1 < tokens.size(); ++i) {
      int id = lookup(t.piece(tokens[i]) + t.piece(tokens[i + 1]));
      if (id != -1 && t.score(id) > best_score) {
        best_score = t.score(id);
        best_id = id;
        best_idx = static_cast<int>(i);
      }
    }
    if (best_idx == -1) break;
    tokens[static_cast<std::size_t>(best_idx)] = best_id;
    tokens.erase(tokens.begin() + best_idx + 1);
  }
  return tokens;
}

const std::vector<std::string> texts = {
    "",
    "a",
    "Once upon a time",
    "Hello world",
    "The cat sat on the mat. It was happy!",
    "  two  spaces\tand a tab\nnewline",
    "caf\xc3\xa9 na\xc3\xafve \xe2\x82\xac 10 \xf0\x9f\x98\x80",
    "Lily and Ben went to the park to play with the big red ball.",
};

} // namespace

TEST_CASE("encode matches a plain transcription of run.c's encode") {
  const auto& tok = test::tok512();
  for (const auto& text : texts) {
    INFO("text \"" << text << "\"");
    CHECK(tok.encode(text, true) == reference_encode(tok, text));
  }
}

TEST_CASE("encode matches run.c's encode on random texts, ties included") {
  // encode merges through a heap (O(n log n)) where run.c rescans every pair per merge; the
  // two must pick the same pair at every step: the best score, the leftmost on ties.
  std::mt19937_64 rng(test::test_seed());
  INFO("seed " << test::test_seed() << " (set DUET_TEST_SEED to replay)");
  auto random_text = [&](const std::vector<std::string>& alphabet, int max_len) {
    std::string text;
    const int len = std::uniform_int_distribution<int>(0, max_len)(rng);
    for (int i = 0; i < len; ++i)
      text += alphabet[std::uniform_int_distribution<std::size_t>(0, alphabet.size() - 1)(rng)];
    return text;
  };
  const auto& tok = test::tok512();
  const std::vector<std::string> letters = {"a",
                                            "b",
                                            "e",
                                            "n",
                                            "o",
                                            "s",
                                            "t",
                                            "h",
                                            " ",
                                            " ",
                                            "the ",
                                            "ing",
                                            "Lily",
                                            ".",
                                            ",",
                                            "\n",
                                            "\xc3\xa9",
                                            "\xe2\x82\xac",
                                            "\xf0\x9f\x98\x80",
                                            "aaaa"};
  for (int i = 0; i < 200; ++i) {
    const std::string text = random_text(letters, 60);
    INFO("tok512, text \"" << text << "\"");
    REQUIRE(tok.encode(text, true) == reference_encode(tok, text));
  }
  // A vocabulary where every merge ties (all scores equal), over a two-letter alphabet: only
  // the leftmost rule decides. Ids 3..258 are the byte pieces, as reference_encode assumes.
  std::vector<std::string> pieces = {"<unk>", "<s>", "</s>"};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    pieces.push_back(name);
  }
  for (const char* p : {" ", "a", "b", "aa", "ab", "ba", "bb", " a", " b", "aab", "abb", "bab",
                        "aaaa", "abab", " ab", "baba"})
    pieces.push_back(p);
  for (const float tie : {0.0f, -3.0f}) {
    std::vector<float> scores(pieces.size(), tie);
    const engine::tokenizer ties(pieces, scores, 1, 2);
    for (int i = 0; i < 200; ++i) {
      const std::string text = random_text({"a", "b", "a", "b", " "}, 40);
      INFO("ties at " << tie << ", text \"" << text << "\"");
      REQUIRE(ties.encode(text, true) == reference_encode(ties, text));
    }
  }
}

TEST_CASE("encode of a 256 KiB prompt ends and round-trips") {
  // run.c's rescan per merge made this hours of work (a 64 KB prompt took 97 s), enough to
  // hold a gateway thread for as long as a client liked; no time is asserted here, but a
  // quadratic encode would not finish within the test's timeout.
  const auto& tok = test::tok512();
  std::string text;
  while (text.size() < (256u << 10))
    text += "Once upon a time, there was a little girl named Lily. She loved the sun. ";
  const auto ids = tok.encode(text, true);
  CHECK(ids.size() > text.size() / 8);
  // After BOS, decoding drops the dummy leading space.
  CHECK(tok.decode_all(std::span(ids).subspan(1), tok.bos_id()) == text);
}

TEST_CASE("encode gives the known ids of tok512") {
  const auto& tok = test::tok512();
  CHECK(tok.encode("", true) == std::vector<int>{1});
  CHECK(tok.encode("", false).empty());
  // The dummy prefix " " merges with the first letter.
  CHECK(tok.encode("a", false) == std::vector<int>{tok.find_piece(" a")});
  // Ids from run.c's algorithm (reference_encode above gives the same).
  CHECK(tok.encode("Once upon a time", true) == std::vector<int>{1, 403, 407, 261, 378});
  CHECK(tok.bos_id() == 1);
  CHECK(tok.eos_id() == 2);
  CHECK(tok.vocab_size() == 512);
  CHECK(tok.max_piece_bytes() == 7);
}

TEST_CASE("decode after BOS drops the dummy space and round-trips text") {
  const auto& tok = test::tok512();
  for (const auto& text : texts) {
    auto ids = tok.encode(text, true);
    INFO("text \"" << text << "\"");
    CHECK(tok.decode_all(std::span(ids).subspan(1), ids[0]) == text);
  }
}

TEST_CASE("non-ASCII code points without a piece fall back to byte tokens") {
  const auto& tok = test::tok512();
  auto ids = tok.encode("\xe4\xb8\xad", false); // U+4E2D has no piece in tok512
  REQUIRE(ids.size() == 4);
  CHECK(ids[0] == tok.find_piece(" "));
  CHECK(ids[1] == 0xE4 + 3);
  CHECK(ids[2] == 0xB8 + 3);
  CHECK(ids[3] == 0xAD + 3);
  CHECK(tok.decode(ids[1], ids[2]) == "\xb8");
  CHECK(tok.piece(0xE4 + 3) == "<0xE4>");
}

TEST_CASE("a tokenizer built from pieces uses their byte pieces and rejects bad input") {
  std::vector<std::string> pieces = {"<unk>", "<s>", "</s>", "<0x41>", " ", "b", " b"};
  std::vector<float> scores = {0, 0, 0, 0, 0, 0, 5};
  engine::tokenizer t(pieces, scores, 1, 2);
  CHECK(t.encode("Ab", true) == std::vector<int>{1, 4, 3, 5});
  CHECK(t.encode(" b", false) == std::vector<int>{4, 6});
  CHECK(t.decode(1, 6) == "b");
  CHECK(t.decode(5, 3) == "A");
  CHECK(t.decode(5, 99) == "");
  CHECK_THROWS_AS(engine::tokenizer(pieces, {1.0f}, 1, 2), engine::engine_error);
  CHECK_THROWS_AS(engine::tokenizer(pieces, scores, 1, 7), engine::engine_error);
}
