// `synth`: random-weight models of standard shapes read back with the expected config, a
// self-contained tokenizer, N(0, 0.02) weights, unit norms, and the same bytes for the same seed.

#include "engine/gguf_reader.hpp"
#include "engine/gguf_writer.hpp"
#include "engine/model_file.hpp"
#include "engine/synth.hpp"
#include "engine_helpers.hpp"
#include "gguf_test_support.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <set>

using namespace duet::engine;

namespace {

void check_config(const model_config& c, int dim, int hidden, int layers, int heads, int kv,
                  int vocab, int seq) {
  CHECK(c.dim == dim);
  CHECK(c.hidden_dim == hidden);
  CHECK(c.n_layers == layers);
  CHECK(c.n_heads == heads);
  CHECK(c.n_kv_heads == kv);
  CHECK(c.vocab_size == vocab);
  CHECK(c.seq_len == seq);
}

std::vector<float> decode_tensor(const tensor_view& v) {
  std::vector<float> out(static_cast<std::size_t>(v.rows * v.cols));
  for (std::int64_t r = 0; r < v.rows; ++r)
    decode_row(v.row(r), static_cast<std::size_t>(v.cols), v.type,
               out.data() + static_cast<std::size_t>(r * v.cols));
  return out;
}

} // namespace

TEST_CASE("synth shapes are the standard stories15M, stories110M and TinyLlama-1.1B shapes") {
  check_config(find_synth_shape("stories15M")->config, 288, 768, 6, 6, 6, 32000, 256);
  check_config(find_synth_shape("stories110M")->config, 768, 2048, 12, 12, 12, 32000, 1024);
  check_config(find_synth_shape("llama-1b")->config, 2048, 5632, 22, 32, 4, 32000, 2048);
  CHECK_FALSE(find_synth_shape("llama-70b").has_value());
}

TEST_CASE("synth vocabulary has unique pieces, byte fallback and mergeable filler") {
  const gguf_vocab v = synth_vocab(32000);
  REQUIRE(v.pieces.size() == 32000);
  REQUIRE(v.scores.size() == 32000);
  CHECK(v.pieces[1] == "<s>");
  CHECK(v.pieces[3 + 'A'] == "<0x41>");
  CHECK(v.token_types[3 + 'A'] == token_type::byte);
  std::set<std::string> unique(v.pieces.begin(), v.pieces.end());
  CHECK(unique.size() == v.pieces.size());
  // Every multi-character filler piece splits into two shorter pieces, so BPE can build it.
  for (std::size_t id = 259; id < v.pieces.size(); ++id) {
    const std::string& p = v.pieces[id];
    if (p.size() < 2) continue;
    INFO("piece '" << p << "'");
    CHECK(unique.count(p.substr(0, p.size() - 1)) == 1);
    CHECK(unique.count(p.substr(p.size() - 1)) == 1);
  }
}

TEST_CASE("synth writes a tiny model that reads back with its config, tokenizer and weights") {
  const synth_shape shape = *find_synth_shape("tiny");
  duet::test::temp_dir dir;
  for (dtype type : {dtype::f32, dtype::f16, dtype::q8_0}) {
    INFO("type " << dtype_name(type));
    const std::string path =
        dir.file(std::string{"tiny-"} + std::string{dtype_name(type)} + ".gguf");
    int lines = 0;
    write_synth_model(path, shape, type, synth_options{42, 0.02f},
                      [&](const std::string&) { ++lines; });
    CHECK(lines > 3); // progress was reported
    const auto m = open_model(path);
    CHECK(m.format == model_format::gguf);
    const model_weights& w = *m.weights;
    check_config(w.config, 64, 96, 2, 4, 2, 512, 128);
    CHECK(w.classifier.data != w.token_embedding.data); // own output.weight
    CHECK(w.layers[0].wq.type == type);
    CHECK(w.layers[1].rms_ffn.type == dtype::f32);
    // Norms are 1; matrices are N(0, 0.02): check mean and standard deviation.
    for (float x : decode_tensor(w.layers[1].rms_att)) REQUIRE(x == 1.0f);
    const auto emb = decode_tensor(w.token_embedding);
    double sum = 0, sq = 0;
    for (float x : emb) {
      sum += x;
      sq += static_cast<double>(x) * x;
    }
    const double mean = sum / static_cast<double>(emb.size());
    const double sd = std::sqrt(sq / static_cast<double>(emb.size()) - mean * mean);
    CHECK(std::fabs(mean) < 0.001); // 32768 samples: standard error of the mean ~1.1e-4
    CHECK(sd == Approx(0.02).epsilon(0.03));
    // The tokenizer round-trips text through its byte fallback and filler pieces.
    const std::string text = "hello world, ~ and \xC3\xA9!";
    const auto ids = m.tok.encode(text, true);
    CHECK(ids.front() == 1);
    CHECK(m.tok.decode_all(std::span(ids).subspan(1), 1) == text);
    // And the engine runs it.
    runner r(w);
    kv_cache kv(duet::test::full_cache(w, 1));
    const auto out = duet::test::engine_greedy(r, kv, 1, ids, 48);
    CHECK(out.size() >= ids.size());
  }
}

TEST_CASE("synth output depends only on the seed") {
  const synth_shape shape = *find_synth_shape("tiny");
  duet::test::temp_dir dir;
  write_synth_model(dir.file("a.gguf"), shape, dtype::q8_0, synth_options{7, 0.02f});
  write_synth_model(dir.file("b.gguf"), shape, dtype::q8_0, synth_options{7, 0.02f});
  write_synth_model(dir.file("c.gguf"), shape, dtype::q8_0, synth_options{8, 0.02f});
  const auto a = duet::test::read_bytes(dir.file("a.gguf"));
  CHECK(a == duet::test::read_bytes(dir.file("b.gguf")));
  CHECK(a != duet::test::read_bytes(dir.file("c.gguf")));
}
