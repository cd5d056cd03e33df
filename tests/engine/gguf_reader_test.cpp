// The GGUF reader against the real stories260K.gguf written by llama.cpp's own converter:
// every tensor must be byte-identical to the llama2.c checkpoint it came from, and the
// config and vocabulary must be those of stories260K.bin + tok512.bin.

#include "engine/gguf_reader.hpp"
#include "engine/model_file.hpp"
#include "gguf_test_support.hpp"
#include "tests/support/models.hpp"

#include <catch2/catch.hpp>

using namespace duet::engine;
using duet::test::same_bytes;

namespace {

void check_matrix(const tensor_view& v, const std::vector<float>& all, int layer, int rows,
                  int cols) {
  INFO("layer " << layer << " rows " << rows << " cols " << cols);
  REQUIRE(v.type == dtype::f32);
  REQUIRE(v.rows == rows);
  REQUIRE(v.cols == cols);
  const std::size_t n = static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols);
  CHECK(same_bytes(v.data, all.data() + static_cast<std::size_t>(layer) * n, n));
}

} // namespace

TEST_CASE("stories260K.gguf loads with every tensor byte-identical to stories260K.bin") {
  const auto gguf = load_gguf_model(duet::test::model_file("stories260K.gguf"));
  const auto ref = duet::test::read_llama2c(duet::test::model_file("stories260K.bin"));
  const model_weights& w = gguf.weights;
  const model_config& c = w.config;
  CHECK(c.dim == ref.dim);
  CHECK(c.hidden_dim == ref.hidden_dim);
  CHECK(c.n_layers == ref.n_layers);
  CHECK(c.n_heads == ref.n_heads);
  CHECK(c.n_kv_heads == ref.n_kv_heads);
  CHECK(c.vocab_size == ref.vocab_size);
  CHECK(c.seq_len == ref.seq_len);
  CHECK(c.rms_eps == 1e-5f);
  CHECK(c.rope_theta == 10000.0f);
  REQUIRE(w.storage != nullptr);

  const int d = c.dim, h = c.hidden_dim, kv = c.kv_dim();
  check_matrix(w.token_embedding, ref.token_embedding, 0, c.vocab_size, d);
  check_matrix(w.classifier, ref.token_embedding, 0, c.vocab_size, d);
  check_matrix(w.rms_final, ref.rms_final, 0, 1, d);
  REQUIRE(w.layers.size() == static_cast<std::size_t>(c.n_layers));
  for (int l = 0; l < c.n_layers; ++l) {
    const layer_weights& L = w.layers[static_cast<std::size_t>(l)];
    check_matrix(L.rms_att, ref.rms_att, l, 1, d);
    check_matrix(L.wq, ref.wq, l, d, d);
    check_matrix(L.wk, ref.wk, l, kv, d);
    check_matrix(L.wv, ref.wv, l, kv, d);
    check_matrix(L.wo, ref.wo, l, d, d);
    check_matrix(L.rms_ffn, ref.rms_ffn, l, 1, d);
    check_matrix(L.w1, ref.w1, l, h, d);
    check_matrix(L.w2, ref.w2, l, d, h);
    check_matrix(L.w3, ref.w3, l, h, d);
  }
}

TEST_CASE("stories260K.gguf metadata parses as its README lists it") {
  const auto bytes = duet::test::read_bytes(duet::test::model_file("stories260K.gguf"));
  const gguf_file f = parse_gguf(bytes, "stories260K.gguf");
  CHECK(f.version == 3);
  CHECK(f.alignment == 32);
  CHECK(f.metadata.size() == 19);
  CHECK(f.tensors.size() == 48);
  CHECK(f.data_offset == 14176);
  REQUIRE(f.find("general.name") != nullptr);
  CHECK(f.find("general.name")->string_value == "llama");
  REQUIRE(f.find("tokenizer.ggml.seperator_token_id") != nullptr);
  CHECK(f.find("tokenizer.ggml.seperator_token_id")->uint_value == 4294967295u);
  const auto* q0 = f.find_tensor("blk.0.attn_q.weight");
  REQUIRE(q0 != nullptr);
  CHECK(q0->offset == 262400);
  CHECK(q0->ne[0] == 64);
  CHECK(q0->ne[1] == 64);
  const auto* n4 = f.find_tensor("blk.4.ffn_norm.weight");
  REQUIRE(n4 != nullptr);
  CHECK(n4->offset == 1170944);
  CHECK(n4->n_dims == 1);
}

TEST_CASE("stories260K.gguf vocabulary equals tok512.bin with spaces for U+2581") {
  const auto gguf = load_gguf_model(duet::test::model_file("stories260K.gguf"));
  const auto ref = duet::test::read_llama2c_vocab(duet::test::model_file("tok512.bin"), 512);
  const gguf_vocab& v = gguf.vocab;
  REQUIRE(v.pieces.size() == 512);
  CHECK(v.bos_id == 1);
  CHECK(v.eos_id == 2);
  CHECK(v.unk_id == 0);
  CHECK(v.add_bos);
  CHECK(v.add_space_prefix);
  CHECK(v.scores == ref.scores);
  CHECK(v.token_types[0] == token_type::unknown);
  CHECK(v.token_types[3] == token_type::byte);
  CHECK(v.token_types[259] == token_type::normal);
  for (std::size_t id = 0; id < 512; ++id) {
    INFO("token id " << id);
    if (v.token_types[id] == token_type::control)
      // llama2.c's exporter wrote BOS/EOS as "\n<s>\n" and "\n</s>\n"; GGUF has "<s>", "</s>".
      CHECK("\n" + v.pieces[id] + "\n" == ref.pieces[id]);
    else
      CHECK(v.pieces[id] == ref.pieces[id]);
  }
  CHECK(v.pieces[259] == " t");
  CHECK(v.pieces[3 + 0x0A] == "<0x0A>");
}

TEST_CASE("open_model detects GGUF by its magic and takes the tokenizer from the file") {
  const auto m = open_model(duet::test::model_file("stories260K.gguf"));
  CHECK(m.format == model_format::gguf);
  CHECK(m.weights->config.dim == 64);
  CHECK(m.tok.vocab_size() == 512);
  CHECK(m.tok.bos_id() == 1);
  CHECK(m.tok.eos_id() == 2);
  CHECK(m.tok.piece(259) == " t");
}

TEST_CASE("open_model reads a llama2.c checkpoint with its tokenizer and refuses one without") {
  const auto bin = duet::test::model_file("stories260K.bin");
  CHECK(detect_model_format(bin) == model_format::llama2c);
  const auto m = open_model(bin, duet::test::model_file("tok512.bin"));
  CHECK(m.format == model_format::llama2c);
  CHECK(m.weights->config.vocab_size == 512);
  CHECK(m.tok.vocab_size() == 512);
  try {
    (void)open_model(bin);
    FAIL("a llama2.c checkpoint without a tokenizer was accepted");
  } catch (const engine_error& e) {
    CHECK(e.code() == engine_errc::invalid_argument);
    CHECK_THAT(e.what(), Catch::Contains("stories260K.bin") && Catch::Contains("tokenizer"));
  }
}

TEST_CASE("open_model names a missing file") {
  try {
    (void)open_model("/nonexistent/model.gguf");
    FAIL("a missing file was accepted");
  } catch (const engine_error& e) {
    CHECK(e.code() == engine_errc::io_error);
    CHECK_THAT(e.what(), Catch::Contains("/nonexistent/model.gguf"));
  }
}
