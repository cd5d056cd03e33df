// A table of corruptions of the real stories260K.gguf, each written to a temp file and opened
// the way users open models: every one must be refused with an engine_error whose message names
// the file and what is wrong, and the fuzzing entry point must return (not throw) the same.

#include "engine/gguf_reader.hpp"
#include "engine/model_file.hpp"
#include "gguf_test_support.hpp"
#include "tests/support/models.hpp"
#include "tests/support/seed.hpp"

#include <catch2/catch.hpp>

#include <cstdlib>
#include <functional>
#include <random>

using namespace duet::engine;
using bytes_t = std::vector<std::uint8_t>;

namespace {

template <class T>
void poke(bytes_t& b, std::uint64_t at, T v) {
  REQUIRE(at + sizeof(T) <= b.size());
  std::memcpy(b.data() + at, &v, sizeof(T));
}

/// Cuts `b` to its first n bytes (erase, not resize: nothing can grow).
void truncate(bytes_t& b, std::size_t n) {
  if (n < b.size()) b.erase(b.begin() + static_cast<std::ptrdiff_t>(n), b.end());
}

struct corruption {
  std::string what;
  std::function<void(bytes_t&, const gguf_file&)> apply;
  std::vector<std::string> expected; ///< substrings of the message
};

std::uint64_t type_field_offset(const gguf_tensor_info& t) {
  return t.info_offset + 8 + t.name.size() + 4 + 8 * t.n_dims;
}

} // namespace

TEST_CASE("corrupt GGUF files are refused with errors that name the file and the problem") {
  const bytes_t original = duet::test::read_bytes(duet::test::model_file("stories260K.gguf"));
  const gguf_file layout = parse_gguf(original, "stories260K.gguf");
  const auto* q0 = layout.find_tensor("blk.0.attn_q.weight");
  const auto* up3 = layout.find_tensor("blk.3.ffn_up.weight");
  const auto* ffn = layout.find("llama.feed_forward_length");
  const auto* arch = layout.find("general.architecture");
  REQUIRE(q0 != nullptr);
  REQUIRE(up3 != nullptr);
  REQUIRE(ffn != nullptr);
  REQUIRE(arch != nullptr);

  const std::vector<corruption> table{
      {"empty file", [](bytes_t& b, const gguf_file&) { b.clear(); }, {"offset 0", "magic"}},
      {"truncated header",
       [](bytes_t& b, const gguf_file&) { truncate(b, 12); },
       {"offset 8", "file ends while reading the tensor count"}},
      {"truncated metadata",
       [](bytes_t& b, const gguf_file&) { truncate(b, 5000); },
       {"file ends while reading", "tokenizer.ggml.tokens"}},
      {"truncated tensor infos",
       [&](bytes_t& b, const gguf_file&) { truncate(b, q0->info_offset + 10); },
       {"file ends while reading the name of tensor 3"}},
      {"bad magic",
       [](bytes_t& b, const gguf_file&) { b[3] = 'X'; },
       {"offset 0", "bad magic", "GGUF"}},
      {"bad version",
       [](bytes_t& b, const gguf_file&) { poke<std::uint32_t>(b, 4, 7); },
       {"offset 4", "unsupported GGUF version 7"}},
      {"big-endian version",
       [](bytes_t& b, const gguf_file&) { poke<std::uint32_t>(b, 4, 3u << 24); },
       {"big-endian"}},
      {"tensor data past end of file",
       [](bytes_t& b, const gguf_file&) { truncate(b, b.size() - 100); },
       {"blk.4.ffn_norm.weight", "runs past the end of the file"}},
      {"unknown tensor type",
       [&](bytes_t& b, const gguf_file&) { poke<std::uint32_t>(b, type_field_offset(*q0), 99); },
       {"blk.0.attn_q.weight", "unknown ggml tensor type 99",
        "offset " + std::to_string(type_field_offset(*q0))}},
      {"known but unsupported tensor type",
       [&](bytes_t& b, const gguf_file&) { poke<std::uint32_t>(b, type_field_offset(*q0), 2); },
       {"blk.0.attn_q.weight", "q4_0", "supported: f32, f16, q8_0"}},
      {"absurd dimensions (element count overflows)",
       [&](bytes_t& b, const gguf_file&) {
         poke<std::uint64_t>(b, q0->info_offset + 8 + q0->name.size() + 4, 1ull << 62);
       },
       {"absurd dimension", "blk.0.attn_q.weight"}},
      {"absurd dimensions (data far past end)",
       [&](bytes_t& b, const gguf_file&) {
         poke<std::uint64_t>(b, q0->info_offset + 8 + q0->name.size() + 4, 1ull << 40);
       },
       {"blk.0.attn_q.weight", "runs past the end of the file"}},
      {"too many dimensions",
       [&](bytes_t& b, const gguf_file&) {
         poke<std::uint32_t>(b, q0->info_offset + 8 + q0->name.size(), 9);
       },
       {"blk.0.attn_q.weight", "9 dimensions", "expected 1..4"}},
      {"absurd tensor count",
       [](bytes_t& b, const gguf_file&) { poke<std::uint64_t>(b, 8, 1ull << 60); },
       {"offset 8", "absurd tensor count"}},
      {"absurd metadata count",
       [](bytes_t& b, const gguf_file&) { poke<std::uint64_t>(b, 16, 1ull << 40); },
       {"offset 16", "absurd metadata key/value count"}},
      {"absurd string length",
       [](bytes_t& b, const gguf_file&) { poke<std::uint64_t>(b, 24, 1ull << 63); },
       {"offset 24", "metadata key 0 has length"}},
      {"absurd array length",
       [](bytes_t& b, const gguf_file& f) {
         poke<std::uint64_t>(b, f.find("tokenizer.ggml.scores")->offset + 4, 1ull << 61);
       },
       {"tokenizer.ggml.scores", "claims"}},
      {"misaligned tensor offset",
       [&](bytes_t& b, const gguf_file&) {
         poke<std::uint64_t>(b, type_field_offset(*q0) + 4, 262401);
       },
       {"blk.0.attn_q.weight", "not a multiple of the alignment"}},
      {"missing tensor",
       [&](bytes_t& b, const gguf_file&) {
         std::memcpy(b.data() + up3->info_offset + 8 + 10, "xx", 2);
       },
       {"missing tensor 'blk.3.ffn_up.weight'"}},
      {"shape mismatch with the hyperparameters",
       [&](bytes_t& b, const gguf_file&) { poke<std::uint32_t>(b, ffn->offset, 173); },
       {"blk.0.ffn_gate.weight", "ne=[64, 172]", "expected [64, 173]"}},
      {"unsupported architecture",
       [&](bytes_t& b, const gguf_file&) { b[arch->offset + 8 + 4] = 'b'; },
       {"architecture 'llamb' is not supported"}},
  };

  duet::test::temp_dir dir;
  for (const auto& c : table) {
    SECTION(c.what) {
      bytes_t bytes = original;
      c.apply(bytes, layout);
      const std::string path = dir.file("corrupt.gguf");
      duet::test::write_bytes(path, bytes);
      bool refused = false;
      try {
        (void)load_gguf_model(path);
      } catch (const engine_error& e) {
        refused = true;
        const std::string msg = e.what();
        INFO("message: " << msg);
        CHECK(msg.find(path) != std::string::npos);
        for (const auto& s : c.expected) CHECK_THAT(msg, Catch::Contains(s));
        CHECK(e.code() != engine_errc::io_error);
      }
      CHECK(refused);
      const auto r = parse_gguf_bytes(bytes.data(), bytes.size());
      CHECK_FALSE(r.error.empty());
    }
  }
}

TEST_CASE("the unmodified file passes the fuzzing entry point") {
  const bytes_t original = duet::test::read_bytes(duet::test::model_file("stories260K.gguf"));
  const auto r = parse_gguf_bytes(original.data(), original.size());
  CHECK(r.error.empty());
  CHECK(r.tensors == 48);
  CHECK(r.metadata == 19);
}

TEST_CASE("random byte damage to the header region never crashes the parser") {
  // Seeded; set DUET_TEST_SEED to replay a run.
  const std::uint64_t seed = duet::test::test_seed();
  INFO("seed " << seed << " (DUET_TEST_SEED to replay)");
  std::printf("gguf damage test seed %llu\n", static_cast<unsigned long long>(seed));
  const bytes_t original = duet::test::read_bytes(duet::test::model_file("stories260K.gguf"));
  const gguf_file layout = parse_gguf(original, "stories260K.gguf");
  std::mt19937_64 rng(seed);
  int refused = 0;
  for (int iter = 0; iter < 300; ++iter) {
    bytes_t b = original;
    // Damage only metadata and tensor infos, where the parser's decisions are.
    std::uniform_int_distribution<std::uint64_t> pos(0, layout.data_offset - 1);
    const int flips = 1 + static_cast<int>(rng() % 8);
    for (int i = 0; i < flips; ++i) b[pos(rng)] = static_cast<std::uint8_t>(rng());
    if (rng() % 4 == 0) truncate(b, pos(rng));
    const auto r = parse_gguf_bytes(b.data(), b.size());
    refused += r.error.empty() ? 0 : 1;
  }
  CHECK(refused > 0);
}
