// llama2.c -> `convert` -> GGUF -> read back: f32 is lossless (tensors byte-identical, greedy
// tokens identical to the .bin), f16 and q8_0 dequantize within their stated tolerances, and
// q8_0 blocks are bit-for-bit ggml's quantize_row_q8_0_ref.

#include "engine/gguf_export.hpp"
#include "engine/gguf_reader.hpp"
#include "engine/gguf_writer.hpp"
#include "engine/model_file.hpp"
#include "engine_helpers.hpp"
#include "gguf_test_support.hpp"

#include <catch2/catch.hpp>

#include <cmath>

using namespace duet::engine;
using duet::test::same_bytes;

namespace {

struct converted {
  duet::test::temp_dir dir;
  std::string path;
};

/// stories260K + tok512 converted to `type` in a fresh temp folder.
std::unique_ptr<converted> convert_stories(dtype type) {
  auto c = std::make_unique<converted>();
  c->path = c->dir.file("stories260K-" + std::string{dtype_name(type)} + ".gguf");
  convert_llama2c_to_gguf(duet::test::model_file("stories260K.bin"),
                          duet::test::model_file("tok512.bin"), c->path, type);
  return c;
}

/// Every (tensor, f32 source) pair of a model, for element-wise comparisons.
std::vector<std::pair<const tensor_view*, const tensor_view*>> pairs(const model_weights& a,
                                                                     const model_weights& b) {
  std::vector<std::pair<const tensor_view*, const tensor_view*>> out{
      {&a.token_embedding, &b.token_embedding},
      {&a.classifier, &b.classifier},
      {&a.rms_final, &b.rms_final}};
  for (std::size_t l = 0; l < a.layers.size(); ++l) {
    const auto &x = a.layers[l], &y = b.layers[l];
    for (auto [p, q] : {std::pair{&x.rms_att, &y.rms_att},
                        {&x.wq, &y.wq},
                        {&x.wk, &y.wk},
                        {&x.wv, &y.wv},
                        {&x.wo, &y.wo},
                        {&x.rms_ffn, &y.rms_ffn},
                        {&x.w1, &y.w1},
                        {&x.w2, &y.w2},
                        {&x.w3, &y.w3}})
      out.emplace_back(p, q);
  }
  return out;
}

std::vector<float> decode_tensor(const tensor_view& v) {
  std::vector<float> out(static_cast<std::size_t>(v.rows * v.cols));
  for (std::int64_t r = 0; r < v.rows; ++r)
    decode_row(v.row(r), static_cast<std::size_t>(v.cols), v.type,
               out.data() + static_cast<std::size_t>(r * v.cols));
  return out;
}

} // namespace

TEST_CASE("convert f32 writes tensors byte-identical to the llama2.c checkpoint") {
  auto c = convert_stories(dtype::f32);
  const auto g = load_gguf_model(c->path);
  const auto ref = duet::test::read_llama2c(duet::test::model_file("stories260K.bin"));
  const model_weights& w = g.weights;
  CHECK(w.config.dim == ref.dim);
  CHECK(w.config.hidden_dim == ref.hidden_dim);
  CHECK(w.config.n_layers == ref.n_layers);
  CHECK(w.config.n_heads == ref.n_heads);
  CHECK(w.config.n_kv_heads == ref.n_kv_heads);
  CHECK(w.config.vocab_size == ref.vocab_size);
  CHECK(w.config.seq_len == ref.seq_len);
  // The shared classifier is not written again: output ties to token_embd.
  CHECK(w.classifier.data == w.token_embedding.data);
  const std::size_t d = 64, h = 172, kv = 32;
  CHECK(same_bytes(w.token_embedding.data, ref.token_embedding.data(), 512 * d));
  CHECK(same_bytes(w.rms_final.data, ref.rms_final.data(), d));
  for (std::size_t l = 0; l < 5; ++l) {
    INFO("layer " << l);
    const auto& L = w.layers[l];
    CHECK(same_bytes(L.rms_att.data, ref.rms_att.data() + l * d, d));
    CHECK(same_bytes(L.wq.data, ref.wq.data() + l * d * d, d * d));
    CHECK(same_bytes(L.wk.data, ref.wk.data() + l * kv * d, kv * d));
    CHECK(same_bytes(L.wv.data, ref.wv.data() + l * kv * d, kv * d));
    CHECK(same_bytes(L.wo.data, ref.wo.data() + l * d * d, d * d));
    CHECK(same_bytes(L.rms_ffn.data, ref.rms_ffn.data() + l * d, d));
    CHECK(same_bytes(L.w1.data, ref.w1.data() + l * h * d, h * d));
    CHECK(same_bytes(L.w2.data, ref.w2.data() + l * d * h, d * h));
    CHECK(same_bytes(L.w3.data, ref.w3.data() + l * h * d, h * d));
  }
  // Vocabulary as llama.cpp's converter types it, pieces as tok512.bin spells them.
  const auto tok = duet::test::read_llama2c_vocab(duet::test::model_file("tok512.bin"), 512);
  CHECK(g.vocab.scores == tok.scores);
  CHECK(g.vocab.pieces[0] == "<unk>");
  CHECK(g.vocab.pieces[1] == "<s>");
  CHECK(g.vocab.pieces[2] == "</s>");
  CHECK(g.vocab.token_types[1] == token_type::control);
  CHECK(g.vocab.token_types[3] == token_type::byte);
  for (std::size_t id = 3; id < 512; ++id) {
    INFO("token id " << id);
    CHECK(g.vocab.pieces[id] == tok.pieces[id]);
  }
}

TEST_CASE("convert f32 writes the metadata of llama.cpp's converter, same token text") {
  auto c = convert_stories(dtype::f32);
  const auto ours_bytes = duet::test::read_bytes(c->path);
  const auto theirs_bytes = duet::test::read_bytes(duet::test::model_file("stories260K.gguf"));
  const gguf_file ours = parse_gguf(ours_bytes, c->path);
  const gguf_file theirs = parse_gguf(theirs_bytes, "stories260K.gguf");
  for (const auto& kv : theirs.metadata) {
    INFO("key " << kv.key);
    const gguf_value* v = ours.find(kv.key);
    REQUIRE(v != nullptr);
    CHECK(v->type == kv.value.type);
    CHECK(v->uint_value == kv.value.uint_value);
    CHECK(v->float_value == kv.value.float_value);
    CHECK(v->string_value == kv.value.string_value);
    CHECK(v->array_count == kv.value.array_count);
    CHECK(v->array_strings == kv.value.array_strings);
    if (v->array_data != nullptr && v->array_count > 0)
      CHECK(std::memcmp(v->array_data, kv.value.array_data,
                        v->array_count * gguf_scalar_size(v->array_type)) == 0);
  }
  // Same tensor bytes wherever the names match (ours omits the duplicated output.weight).
  for (const auto& t : ours.tensors) {
    INFO("tensor " << t.name);
    const auto* u = theirs.find_tensor(t.name);
    REQUIRE(u != nullptr);
    CHECK(t.ne == u->ne);
    CHECK(t.type == u->type);
    REQUIRE(t.bytes == u->bytes);
    CHECK(std::memcmp(t.data, u->data, t.bytes) == 0);
  }
  CHECK(ours.tensors.size() + 1 == theirs.tensors.size());
}

TEST_CASE("greedy tokens from converted and llama.cpp GGUF files equal the llama2.c checkpoint") {
  auto c = convert_stories(dtype::f32);
  const auto bin =
      open_model(duet::test::model_file("stories260K.bin"), duet::test::model_file("tok512.bin"));
  const auto ours = open_model(c->path);
  const auto theirs = open_model(duet::test::model_file("stories260K.gguf"));
  const std::vector<std::pair<std::string, int>> cases = {
      {"", 256}, {"Once upon a time", 200}, {"Tom and his dog went to the beach. They", 300}};
  duet::engine::seq_id seq = 1;
  for (const auto& [text, steps] : cases) {
    INFO("prompt \"" << text << "\", steps " << steps);
    const auto prompt = bin.tok.encode(text, true);
    CHECK(ours.tok.encode(text, true) == prompt);
    CHECK(theirs.tok.encode(text, true) == prompt);
    std::vector<std::vector<int>> outs;
    std::vector<std::string> texts;
    for (const auto* m : {&bin, &ours, &theirs}) {
      runner r(*m->weights);
      kv_cache kv(duet::test::full_cache(*m->weights, 1));
      outs.push_back(duet::test::engine_greedy(r, kv, seq++, prompt, steps));
      texts.push_back(m->tok.decode_all(outs.back(), prompt.back()));
    }
    CHECK(outs[1] == outs[0]);
    CHECK(outs[2] == outs[0]);
    CHECK(texts[1] == texts[0]);
    CHECK(texts[2] == texts[0]);
  }
}

TEST_CASE("f16 and q8_0 conversions dequantize within tolerance of the f32 source") {
  const auto src = load_llama2c_checkpoint(duet::test::model_file("stories260K.bin"));
  for (dtype type : {dtype::f16, dtype::q8_0}) {
    auto c = convert_stories(type);
    const auto g = load_gguf_model(c->path);
    INFO("type " << dtype_name(type));
    for (auto [got, want] : pairs(g.weights, src)) {
      REQUIRE(got->rows == want->rows);
      REQUIRE(got->cols == want->cols);
      // Norms stay f32; q8_0 needs 32 | cols, so ffn_down (172 columns) falls back to f16.
      const dtype expected_type = storage_type(type, want->cols, want->rows == 1);
      CHECK(got->type == expected_type);
      const auto x = decode_tensor(*want);
      const auto y = decode_tensor(*got);
      const auto cols = static_cast<std::size_t>(want->cols);
      for (std::size_t i = 0; i < x.size(); ++i) {
        double tol = 0;
        if (expected_type == dtype::f16) {
          // round to nearest f16: half an ulp (2^-11 relative) or 2^-25 absolute if subnormal
          tol = std::ldexp(std::fabs(x[i]), -11) + std::ldexp(1.0, -25);
        } else if (expected_type == dtype::q8_0) {
          // half a quantization step d = amax/127 of the block, plus d's own f16 rounding
          // (2^-11 relative, times |q| <= 127)
          const std::size_t b0 = i / 32 * 32;
          float amax = 0;
          for (std::size_t j = b0; j < b0 + 32; ++j) amax = std::max(amax, std::fabs(x[j]));
          tol = amax / 127.0 * (0.5 + 127.0 * std::ldexp(1.0, -11)) + 1e-12;
        }
        if (std::fabs(static_cast<double>(y[i]) - x[i]) > tol) {
          FAIL_CHECK("element " << i << " (row " << i / cols << ") " << x[i] << " -> " << y[i]
                                << " exceeds " << tol);
          break;
        }
      }
    }
    // And the engine runs the file.
    const auto m = open_model(c->path);
    runner r(*m.weights);
    kv_cache kv(duet::test::full_cache(*m.weights, 1));
    const auto out =
        duet::test::engine_greedy(r, kv, 1, m.tok.encode("Once upon a time", true), 64);
    CHECK(out.size() > 5);
  }
}

TEST_CASE("q8_0 encoding is ggml's quantize_row_q8_0_ref bit for bit") {
  // Block 0: 0..31 (amax 31); block 1: alternating signs with one large value; block 2: zeros.
  std::vector<float> x(96, 0.0f);
  for (int i = 0; i < 32; ++i) x[static_cast<std::size_t>(i)] = static_cast<float>(i);
  for (int i = 0; i < 32; ++i)
    x[32 + static_cast<std::size_t>(i)] = (i % 2 ? -0.01f : 0.01f) * static_cast<float>(i);
  x[40] = -2.5f;
  std::vector<std::uint8_t> out(3 * sizeof(q8_0_block));
  encode_row(x.data(), x.size(), dtype::q8_0, out.data());
  q8_0_block b[3];
  std::memcpy(b, out.data(), sizeof b);
  for (int blk = 0; blk < 3; ++blk) {
    INFO("block " << blk);
    float amax = 0;
    for (int j = 0; j < 32; ++j)
      amax = std::max(amax, std::fabs(x[static_cast<std::size_t>(blk * 32 + j)]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    CHECK(b[blk].d == f32_to_f16(d));
    for (int j = 0; j < 32; ++j)
      CHECK(b[blk].qs[j] ==
            static_cast<std::int8_t>(std::roundf(x[static_cast<std::size_t>(blk * 32 + j)] * id)));
  }
  CHECK(b[0].qs[31] == 127);
  CHECK(b[0].qs[0] == 0);
  CHECK(b[1].qs[8] == -127);
  CHECK(b[2].d == 0);
}
