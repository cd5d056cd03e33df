// Mapping of a parsed GGUF file of architecture `llama` onto model_weights and gguf_vocab:
// hyperparameters from the llama.* keys (llama.cpp's defaults where absent), tensors by
// llama.cpp's names, tokenizer from tokenizer.ggml.*.

#include "engine/gguf_reader.hpp"
#include "engine/mapped_file.hpp"
#include "engine/q8_pack.hpp"

#include <cmath>
#include <limits>

namespace duet::engine {

namespace {

[[noreturn]] void fail(const gguf_file& f, const std::string& what,
                       engine_errc code = engine_errc::bad_format) {
  throw engine_error(code, f.source + ": " + what);
}

[[noreturn]] void fail_at(const gguf_file& f, std::uint64_t offset, const std::string& what,
                          engine_errc code = engine_errc::bad_format) {
  throw engine_error(code, f.source + ": offset " + std::to_string(offset) + ": " + what);
}

/// An integer hyperparameter in [lo, hi]; `fallback` when absent (nullopt: required).
int get_int(const gguf_file& f, const std::string& key, std::optional<int> fallback, int lo,
            int hi) {
  const gguf_value* v = f.find(key);
  if (v == nullptr) {
    if (!fallback) fail(f, "missing required metadata key '" + key + "'");
    return *fallback;
  }
  if (v->is_array())
    fail_at(f, v->offset,
            "metadata '" + key +
                "' is an array (per-layer values are not supported), "
                "expected one integer",
            engine_errc::unsupported);
  const auto i = v->as_integer();
  if (!i)
    fail_at(f, v->offset,
            "metadata '" + key + "' has type " + gguf_type_name(v->type) + ", expected an integer");
  if (*i < lo || *i > hi)
    fail_at(f, v->offset,
            "metadata '" + key + "' = " + std::to_string(*i) + " is out of range, expected " +
                std::to_string(lo) + ".." + std::to_string(hi));
  return static_cast<int>(*i);
}

float get_float(const gguf_file& f, const std::string& key, float fallback, double lo, double hi) {
  const gguf_value* v = f.find(key);
  if (v == nullptr) return fallback;
  const auto d = v->as_float();
  if (!d)
    fail_at(f, v->offset,
            "metadata '" + key + "' has type " + gguf_type_name(v->type) + ", expected f32");
  if (!(*d >= lo && *d <= hi)) // also rejects NaN
    fail_at(f, v->offset,
            "metadata '" + key + "' = " + std::to_string(*d) + " is out of range, expected " +
                std::to_string(lo) + ".." + std::to_string(hi));
  return static_cast<float>(*d);
}

bool get_bool(const gguf_file& f, const std::string& key, bool fallback) {
  const gguf_value* v = f.find(key);
  if (v == nullptr) return fallback;
  if (v->type != static_cast<std::uint32_t>(gguf_type::boolean))
    fail_at(f, v->offset,
            "metadata '" + key + "' has type " + gguf_type_name(v->type) + ", expected bool");
  return v->uint_value != 0;
}

std::string shape_text(const std::uint64_t* ne, std::uint32_t n) {
  std::string s = "[";
  for (std::uint32_t i = 0; i < n; ++i) {
    if (i) s += ", ";
    s += std::to_string(ne[i]);
  }
  return s + "]";
}

/// The view of tensor `name`, checked against the expected GGML shape [in] or [in, out].
/// `why` says where the expectation comes from, for the message.
tensor_view map_tensor(const gguf_file& f, const std::string& name, std::uint64_t in,
                       std::uint64_t out, bool vector, const std::string& why) {
  const std::uint64_t expected[2] = {in, out};
  const std::string expected_text = shape_text(expected, vector ? 1 : 2);
  const gguf_tensor_info* t = f.find_tensor(name);
  if (t == nullptr)
    fail(f, "missing tensor '" + name + "' (expected ne=" + expected_text + ", " + why + ")");
  const auto type = dtype_of_ggml(t->type);
  const auto traits = ggml_traits(t->type);
  if (!type)
    fail_at(f, t->info_offset,
            "tensor '" + name + "' has ggml type " +
                (traits ? std::string{traits->name} : std::to_string(t->type)) +
                ", which duet cannot compute with (supported: f32, f16, q8_0)",
            engine_errc::unsupported);
  if (vector && *type != dtype::f32)
    fail_at(f, t->info_offset,
            "norm tensor '" + name + "' has type " + std::string{dtype_name(*type)} +
                ", expected f32");
  // Trailing dimensions of 1 are the same tensor (ggml_n_dims drops them).
  bool ok = t->ne[0] == in && (vector ? t->ne[1] == 1 : t->ne[1] == out) && t->ne[2] == 1 &&
            t->ne[3] == 1;
  if (!ok)
    fail_at(f, t->info_offset,
            "tensor '" + name + "' has ne=" + shape_text(t->ne.data(), t->n_dims) + ", expected " +
                expected_text + " (" + why + ")");
  // The forward pass reads f32 / f16 / q8_0 (uint16 scale) in place: the data must be aligned.
  const std::size_t align = *type == dtype::f32 ? 4 : 2;
  if (reinterpret_cast<std::uintptr_t>(t->data) % align != 0)
    fail_at(f, f.data_offset + t->offset,
            "tensor '" + name + "' data is not " + std::to_string(align) + "-byte aligned");
  tensor_view v;
  v.data = t->data;
  v.type = *type;
  v.rows = static_cast<std::int64_t>(vector ? 1 : out);
  v.cols = static_cast<std::int64_t>(in);
  return v;
}

/// The vocabulary size as the token list says; 0 if there is none.
std::uint64_t token_count(const gguf_file& f) {
  const gguf_value* v = f.find("tokenizer.ggml.tokens");
  return v != nullptr && v->is_array() ? v->array_count : 0;
}

} // namespace

gguf_vocab gguf_read_vocab(const gguf_file& f) {
  gguf_vocab vocab;
  if (const gguf_value* m = f.find("tokenizer.ggml.model")) {
    if (m->type != static_cast<std::uint32_t>(gguf_type::string))
      fail_at(f, m->offset,
              "tokenizer.ggml.model has type " + gguf_type_name(m->type) + ", expected string");
    if (m->string_value != "llama")
      fail_at(f, m->offset,
              "tokenizer.ggml.model is '" + std::string{m->string_value} +
                  "', expected 'llama' (SentencePiece BPE by score, the only tokenizer duet has)",
              engine_errc::unsupported);
  }
  const gguf_value* tokens = f.find("tokenizer.ggml.tokens");
  if (tokens == nullptr) fail(f, "missing required metadata key 'tokenizer.ggml.tokens'");
  if (!tokens->is_array() || tokens->array_type != static_cast<std::uint32_t>(gguf_type::string))
    fail_at(f, tokens->offset, "tokenizer.ggml.tokens is not an array of strings");
  const std::uint64_t n = tokens->array_count;
  if (n == 0 || n > static_cast<std::uint64_t>(std::numeric_limits<int>::max()))
    fail_at(f, tokens->offset,
            "tokenizer.ggml.tokens has " + std::to_string(n) + " entries, expected 1..INT_MAX");

  vocab.scores.assign(static_cast<std::size_t>(n), 0.0f);
  if (const gguf_value* s = f.find("tokenizer.ggml.scores")) {
    if (!s->is_array() || s->array_type != static_cast<std::uint32_t>(gguf_type::f32))
      fail_at(f, s->offset, "tokenizer.ggml.scores is not an array of f32");
    if (s->array_count != n)
      fail_at(f, s->offset,
              "tokenizer.ggml.scores has " + std::to_string(s->array_count) +
                  " entries, expected " + std::to_string(n) + " (one per token)");
    for (std::uint64_t i = 0; i < n; ++i) vocab.scores[i] = static_cast<float>(s->array_float(i));
  }
  vocab.token_types.assign(static_cast<std::size_t>(n), token_type::normal);
  if (const gguf_value* t = f.find("tokenizer.ggml.token_type")) {
    const bool integer = t->is_array() &&
                         t->array_type != static_cast<std::uint32_t>(gguf_type::string) &&
                         t->array_type != static_cast<std::uint32_t>(gguf_type::f32) &&
                         t->array_type != static_cast<std::uint32_t>(gguf_type::f64);
    if (!integer) fail_at(f, t->offset, "tokenizer.ggml.token_type is not an array of integers");
    if (t->array_count != n)
      fail_at(f, t->offset,
              "tokenizer.ggml.token_type has " + std::to_string(t->array_count) +
                  " entries, expected " + std::to_string(n) + " (one per token)");
    for (std::uint64_t i = 0; i < n; ++i) {
      const auto v = t->array_integer(i);
      vocab.token_types[i] = v < 0 || v > 1000 ? 0 : static_cast<std::int32_t>(v);
    }
  }
  vocab.pieces.reserve(static_cast<std::size_t>(n));
  for (std::uint64_t i = 0; i < n; ++i) {
    // Byte tokens keep their "<0xXX>" text (as llama2.c's tokenizer spells them).
    if (vocab.token_types[i] == token_type::byte)
      vocab.pieces.emplace_back(tokens->array_strings[i]);
    else
      vocab.pieces.push_back(piece_from_gguf(tokens->array_strings[i]));
  }
  const int id_max = static_cast<int>(n - 1);
  vocab.bos_id = get_int(f, "tokenizer.ggml.bos_token_id", 1, 0, id_max);
  vocab.eos_id = get_int(f, "tokenizer.ggml.eos_token_id", 2, 0, id_max);
  vocab.unk_id = get_int(f, "tokenizer.ggml.unknown_token_id", 0, 0, id_max);
  vocab.add_bos = get_bool(f, "tokenizer.ggml.add_bos_token", true);
  vocab.add_space_prefix = get_bool(f, "tokenizer.ggml.add_space_prefix", true);
  return vocab;
}

gguf_model gguf_to_model(const gguf_file& f) {
  const gguf_value* arch = f.find("general.architecture");
  if (arch == nullptr) fail(f, "missing required metadata key 'general.architecture'");
  if (arch->type != static_cast<std::uint32_t>(gguf_type::string))
    fail_at(f, arch->offset,
            "general.architecture has type " + gguf_type_name(arch->type) + ", expected string");
  if (arch->string_value != "llama")
    fail_at(f, arch->offset,
            "architecture '" + std::string{arch->string_value} +
                "' is not supported, expected 'llama'",
            engine_errc::unsupported);

  // Bounds: far above any Llama (405B has dim 16384, 126 layers, vocab 128256) yet small
  // enough that the int fields of model_config and products like dim * vocab cannot overflow.
  model_config cfg;
  cfg.dim = get_int(f, "llama.embedding_length", std::nullopt, 1, 1 << 16);
  cfg.hidden_dim = get_int(f, "llama.feed_forward_length", std::nullopt, 1, 1 << 20);
  cfg.n_layers = get_int(f, "llama.block_count", std::nullopt, 1, 4096);
  cfg.n_heads = get_int(f, "llama.attention.head_count", std::nullopt, 1, cfg.dim);
  cfg.n_kv_heads = get_int(f, "llama.attention.head_count_kv", cfg.n_heads, 1, cfg.n_heads);
  cfg.seq_len = get_int(f, "llama.context_length", std::nullopt, 1, 1 << 24);
  cfg.rms_eps = get_float(f, "llama.attention.layer_norm_rms_epsilon", 1e-5f, 0.0, 1.0);
  cfg.rope_theta = get_float(f, "llama.rope.freq_base", 10000.0f, 1e-3, 1e12);
  if (cfg.dim % cfg.n_heads != 0)
    fail(f, "llama.embedding_length " + std::to_string(cfg.dim) +
                " is not a multiple of llama.attention.head_count " + std::to_string(cfg.n_heads));
  if (cfg.n_heads % cfg.n_kv_heads != 0)
    fail(f, "llama.attention.head_count " + std::to_string(cfg.n_heads) +
                " is not a multiple of llama.attention.head_count_kv " +
                std::to_string(cfg.n_kv_heads));
  if (cfg.head_size() % 2 != 0)
    fail(f, "head size " + std::to_string(cfg.head_size()) + " is odd; RoPE rotates pairs");
  const int rot = get_int(f, "llama.rope.dimension_count", cfg.head_size(), 0, 1 << 16);
  if (rot != cfg.head_size())
    fail(f,
         "llama.rope.dimension_count " + std::to_string(rot) + " differs from the head size " +
             std::to_string(cfg.head_size()) + " (partial rotary is not supported)",
         engine_errc::unsupported);

  // vocab size: the embedding's rows, which must agree with the token list and llama.vocab_size
  const gguf_tensor_info* embd = f.find_tensor("token_embd.weight");
  if (embd == nullptr) fail(f, "missing tensor 'token_embd.weight'");
  if (embd->ne[1] == 0 || embd->ne[1] > (1u << 24))
    fail_at(f, embd->info_offset,
            "tensor 'token_embd.weight' has " + std::to_string(embd->ne[1]) +
                " rows (vocabulary entries), expected 1..16777216");
  cfg.vocab_size = static_cast<int>(embd->ne[1]);
  cfg.vocab_size = get_int(f, "llama.vocab_size", cfg.vocab_size, cfg.vocab_size, cfg.vocab_size);
  if (token_count(f) != 0 && token_count(f) != embd->ne[1])
    fail(f, "tokenizer.ggml.tokens has " + std::to_string(token_count(f)) +
                " entries but token_embd.weight has " + std::to_string(embd->ne[1]) + " rows");

  gguf_model m;
  m.vocab = gguf_read_vocab(f);
  model_weights& w = m.weights;
  w.config = cfg;
  w.source_path = f.source;
  const auto dim = static_cast<std::uint64_t>(cfg.dim);
  const auto hidden = static_cast<std::uint64_t>(cfg.hidden_dim);
  const auto vocab = static_cast<std::uint64_t>(cfg.vocab_size);
  const auto q_dim = static_cast<std::uint64_t>(cfg.n_heads) * cfg.head_size();
  const auto kv_dim = static_cast<std::uint64_t>(cfg.kv_dim());
  const std::string by_dim = "llama.embedding_length = " + std::to_string(dim);
  const std::string by_ffn = by_dim + ", llama.feed_forward_length = " + std::to_string(hidden);
  const std::string by_kv = by_dim + ", kv heads " + std::to_string(cfg.n_kv_heads) +
                            " x head size " + std::to_string(cfg.head_size());
  const std::string by_vocab = by_dim + ", vocabulary " + std::to_string(vocab);

  w.token_embedding = map_tensor(f, "token_embd.weight", dim, vocab, false, by_vocab);
  w.rms_final = map_tensor(f, "output_norm.weight", dim, 1, true, by_dim);
  // llama.cpp ties the classifier to the embedding when output.weight is absent.
  w.classifier = f.find_tensor("output.weight") != nullptr
                     ? map_tensor(f, "output.weight", dim, vocab, false, by_vocab)
                     : w.token_embedding;
  w.layers.resize(static_cast<std::size_t>(cfg.n_layers));
  for (int l = 0; l < cfg.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    layer_weights& L = w.layers[static_cast<std::size_t>(l)];
    L.rms_att = map_tensor(f, p + "attn_norm.weight", dim, 1, true, by_dim);
    L.wq = map_tensor(f, p + "attn_q.weight", dim, q_dim, false, by_dim);
    L.wk = map_tensor(f, p + "attn_k.weight", dim, kv_dim, false, by_kv);
    L.wv = map_tensor(f, p + "attn_v.weight", dim, kv_dim, false, by_kv);
    L.wo = map_tensor(f, p + "attn_output.weight", q_dim, dim, false, by_dim);
    L.rms_ffn = map_tensor(f, p + "ffn_norm.weight", dim, 1, true, by_dim);
    L.w1 = map_tensor(f, p + "ffn_gate.weight", dim, hidden, false, by_ffn);
    L.w2 = map_tensor(f, p + "ffn_down.weight", hidden, dim, false, by_ffn);
    L.w3 = map_tensor(f, p + "ffn_up.weight", dim, hidden, false, by_ffn);
  }
  return m;
}

gguf_model load_gguf_model(const std::string& path) {
  auto mapping = mapped_file::open(path);
  gguf_file file =
      parse_gguf({reinterpret_cast<const std::uint8_t*>(mapping->data()), mapping->size()}, path);
  gguf_model m = gguf_to_model(file);
  m.weights.storage = std::shared_ptr<const void>(mapping, mapping.get());
  // The kernels read q8_0 matrices from the packed copy: the mapped originals are released so
  // that resident memory holds the weights once (the embedding rows a lookup touches fault back
  // in from the file).
  pack_q8_0_weights(m.weights, [&](const void* p, std::size_t n) { mapping->release(p, n); });
  return m;
}

gguf_parse_result parse_gguf_bytes(const std::uint8_t* data, std::size_t size) noexcept {
  gguf_parse_result r;
  try {
    const gguf_file f = parse_gguf({data, size}, "<bytes>");
    r.tensors = f.tensors.size();
    r.metadata = f.metadata.size();
    if (f.find("general.architecture") != nullptr) (void)gguf_to_model(f);
  } catch (const std::exception& e) {
    try {
      r.error = e.what();
    } catch (...) {
      // allocation failure while copying the message: leave a fixed text
    }
    if (r.error.empty()) r.error = "error";
  } catch (...) {
    r.error = "unknown error";
  }
  return r;
}

} // namespace duet::engine
