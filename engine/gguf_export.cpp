#include "engine/gguf_export.hpp"

#include "engine/error.hpp"
#include "engine/gguf_writer.hpp"
#include "engine/llama2c.hpp"

#include <algorithm>
#include <cstdio>

namespace duet::engine {

namespace {

/// Rows encoded per write: bounded so that a 32000 x 2048 embedding streams in ~8 MB pieces.
constexpr std::size_t chunk_values_max = std::size_t{2} << 20;

/// llama.cpp's LLAMA_FTYPE ids for general.file_type.
std::uint32_t llama_file_type(dtype t) {
  switch (t) {
  case dtype::f32:
    return 0; // ALL_F32
  case dtype::f16:
    return 1; // MOSTLY_F16
  case dtype::q8_0:
    return 7; // MOSTLY_Q8_0
  }
  return 0;
}

bool is_byte_piece(const std::string& p) {
  auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'); };
  return p.size() == 6 && p.compare(0, 3, "<0x") == 0 && hex(p[3]) && hex(p[4]) && p[5] == '>';
}

std::string shape_of(const tensor_plan& p) {
  // Appends, not "[" + std::to_string(...): g++ 12 at -O3 reports a false -Wrestrict on
  // operator+(const char*, std::string&&) (GCC bug 105329).
  std::string s;
  if (!p.vector) s.append("[").append(std::to_string(p.rows)).append("]");
  return s.append("[").append(std::to_string(p.cols)).append("]");
}

} // namespace

dtype storage_type(dtype file_type, std::int64_t cols, bool vector) {
  if (vector) return dtype::f32;
  if (file_type == dtype::q8_0 && cols % static_cast<std::int64_t>(q8_0_block_values) != 0)
    return dtype::f16;
  return file_type;
}

std::vector<tensor_plan> llama_tensor_plans(const model_config& c, dtype file_type,
                                            bool tied_classifier) {
  std::vector<tensor_plan> plans;
  auto add = [&](std::string name, std::int64_t rows, std::int64_t cols, bool vector) {
    tensor_plan p;
    p.name = std::move(name);
    p.rows = rows;
    p.cols = cols;
    p.vector = vector;
    p.type = storage_type(file_type, cols, vector);
    plans.push_back(std::move(p));
  };
  const std::int64_t dim = c.dim, hidden = c.hidden_dim, vocab = c.vocab_size;
  const std::int64_t q_dim = static_cast<std::int64_t>(c.n_heads) * c.head_size();
  const std::int64_t kv_dim = c.kv_dim();
  add("token_embd.weight", vocab, dim, false);
  add("output_norm.weight", 1, dim, true);
  if (!tied_classifier) add("output.weight", vocab, dim, false);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    add(b + "attn_q.weight", q_dim, dim, false);
    add(b + "attn_k.weight", kv_dim, dim, false);
    add(b + "attn_v.weight", kv_dim, dim, false);
    add(b + "attn_output.weight", dim, q_dim, false);
    add(b + "attn_norm.weight", 1, dim, true);
    add(b + "ffn_gate.weight", hidden, dim, false);
    add(b + "ffn_down.weight", dim, hidden, false);
    add(b + "ffn_up.weight", hidden, dim, false);
    add(b + "ffn_norm.weight", 1, dim, true);
  }
  return plans;
}

void write_llama_gguf(const std::string& path, const model_config& c, const gguf_vocab& vocab,
                      dtype file_type, std::vector<tensor_plan> plans,
                      const progress_fn& progress) {
  const std::size_t n_vocab = vocab.pieces.size();
  if (n_vocab != static_cast<std::size_t>(c.vocab_size) || vocab.scores.size() != n_vocab ||
      vocab.token_types.size() != n_vocab)
    throw engine_error(engine_errc::invalid_argument,
                       path + ": vocabulary has " + std::to_string(n_vocab) + " pieces, " +
                           std::to_string(vocab.scores.size()) + " scores and " +
                           std::to_string(vocab.token_types.size()) +
                           " types; the model has vocab_size " + std::to_string(c.vocab_size));
  gguf_writer w;
  // Keys and order as llama.cpp's llama2c converter writes them, then freq_base and file_type.
  std::vector<std::string> tokens;
  tokens.reserve(n_vocab);
  for (std::size_t i = 0; i < n_vocab; ++i)
    tokens.push_back(vocab.token_types[i] == token_type::byte ? vocab.pieces[i]
                                                              : piece_to_gguf(vocab.pieces[i]));
  w.add_string_array("tokenizer.ggml.tokens", tokens);
  w.add_f32_array("tokenizer.ggml.scores", vocab.scores);
  w.add_i32_array("tokenizer.ggml.token_type", vocab.token_types);
  w.add_string("tokenizer.ggml.model", "llama");
  w.add_string("general.architecture", "llama");
  w.add_string("general.name", "llama");
  w.add_u32("tokenizer.ggml.unknown_token_id", static_cast<std::uint32_t>(vocab.unk_id));
  w.add_u32("tokenizer.ggml.bos_token_id", static_cast<std::uint32_t>(vocab.bos_id));
  w.add_u32("tokenizer.ggml.eos_token_id", static_cast<std::uint32_t>(vocab.eos_id));
  w.add_u32("tokenizer.ggml.seperator_token_id", 0xffffffffu); // sic, ggml's key name: none
  w.add_u32("tokenizer.ggml.padding_token_id", 0xffffffffu);
  w.add_u32("llama.context_length", static_cast<std::uint32_t>(c.seq_len));
  w.add_u32("llama.embedding_length", static_cast<std::uint32_t>(c.dim));
  w.add_u32("llama.feed_forward_length", static_cast<std::uint32_t>(c.hidden_dim));
  w.add_u32("llama.attention.head_count", static_cast<std::uint32_t>(c.n_heads));
  w.add_u32("llama.attention.head_count_kv", static_cast<std::uint32_t>(c.n_kv_heads));
  w.add_u32("llama.block_count", static_cast<std::uint32_t>(c.n_layers));
  w.add_u32("llama.rope.dimension_count", static_cast<std::uint32_t>(c.head_size()));
  w.add_f32("llama.attention.layer_norm_rms_epsilon", c.rms_eps);
  w.add_f32("llama.rope.freq_base", c.rope_theta);
  w.add_u32("general.file_type", llama_file_type(file_type));

  for (const auto& p : plans) {
    std::vector<std::uint64_t> ne{static_cast<std::uint64_t>(p.cols)};
    if (!p.vector) ne.push_back(static_cast<std::uint64_t>(p.rows));
    w.add_tensor(p.name, std::move(ne), ggml_type_of(p.type));
  }
  w.open(path);
  if (progress)
    progress("writing " + path + ": " + std::to_string(plans.size()) + " tensors, " +
             std::to_string(w.file_bytes()) + " bytes, " + std::string{dtype_name(file_type)});

  std::vector<float> values;
  std::vector<std::uint8_t> encoded;
  for (std::size_t i = 0; i < plans.size(); ++i) {
    const tensor_plan& p = plans[i];
    if (progress)
      progress("tensor " + std::to_string(i + 1) + "/" + std::to_string(plans.size()) + " " +
               p.name + " " + shape_of(p) + " " + std::string{dtype_name(p.type)});
    if (p.same_type_source != nullptr && p.same_type_source->type == p.type) {
      const auto* src = static_cast<const std::uint8_t*>(p.same_type_source->data);
      w.write({src, p.same_type_source->bytes()});
      continue;
    }
    const auto cols = static_cast<std::size_t>(p.cols);
    const std::int64_t rows_per_chunk =
        std::max<std::int64_t>(1, static_cast<std::int64_t>(chunk_values_max / cols));
    for (std::int64_t r0 = 0; r0 < p.rows; r0 += rows_per_chunk) {
      const std::int64_t n = std::min(rows_per_chunk, p.rows - r0);
      values.resize(static_cast<std::size_t>(n) * cols);
      p.fill(r0, n, values.data());
      const std::size_t rb = row_bytes(p.type, cols);
      encoded.resize(static_cast<std::size_t>(n) * rb);
      for (std::int64_t r = 0; r < n; ++r)
        encode_row(values.data() + static_cast<std::size_t>(r) * cols, cols, p.type,
                   encoded.data() + static_cast<std::size_t>(r) * rb);
      w.write(encoded);
    }
  }
  w.close();
  if (progress) progress("wrote " + path);
}

std::vector<tensor_plan> plans_from_weights(const model_weights& weights, dtype file_type) {
  const bool tied = weights.classifier.data == weights.token_embedding.data;
  auto plans = llama_tensor_plans(weights.config, file_type, tied);
  auto source = [&](const std::string& name) -> const tensor_view& {
    if (name == "token_embd.weight") return weights.token_embedding;
    if (name == "output_norm.weight") return weights.rms_final;
    if (name == "output.weight") return weights.classifier;
    // blk.<l>.<what>.weight
    const std::size_t dot = name.find('.', 4);
    const auto l = static_cast<std::size_t>(std::stoi(name.substr(4, dot - 4)));
    const std::string what = name.substr(dot + 1);
    const layer_weights& L = weights.layers.at(l);
    if (what == "attn_q.weight") return L.wq;
    if (what == "attn_k.weight") return L.wk;
    if (what == "attn_v.weight") return L.wv;
    if (what == "attn_output.weight") return L.wo;
    if (what == "attn_norm.weight") return L.rms_att;
    if (what == "ffn_gate.weight") return L.w1;
    if (what == "ffn_down.weight") return L.w2;
    if (what == "ffn_up.weight") return L.w3;
    return L.rms_ffn;
  };
  for (auto& p : plans) {
    const tensor_view* src = &source(p.name);
    if (src->rows * src->cols != p.rows * p.cols || src->cols != p.cols)
      throw engine_error(engine_errc::mismatch, weights.source_path + ": tensor " + p.name +
                                                    " is [" + std::to_string(src->rows) + "][" +
                                                    std::to_string(src->cols) +
                                                    "], the config implies " + shape_of(p));
    p.same_type_source = src;
    p.fill = [src](std::int64_t row0, std::int64_t n, float* out) {
      const auto cols = static_cast<std::size_t>(src->cols);
      for (std::int64_t r = 0; r < n; ++r)
        decode_row(src->row(row0 + r), cols, src->type, out + static_cast<std::size_t>(r) * cols);
    };
  }
  return plans;
}

gguf_vocab vocab_from_tokenizer(const tokenizer& tok) {
  gguf_vocab v;
  const int n = tok.vocab_size();
  v.bos_id = tok.bos_id();
  v.eos_id = tok.eos_id();
  v.unk_id = 0;
  for (int id = 0; id < n; ++id) {
    std::string piece = tok.piece(id);
    std::int32_t type = token_type::normal;
    if (id == v.unk_id) {
      piece = "<unk>";
      type = token_type::unknown;
    } else if (id == v.bos_id) {
      piece = "<s>";
      type = token_type::control;
    } else if (id == v.eos_id) {
      piece = "</s>";
      type = token_type::control;
    } else if (piece.empty()) {
      type = token_type::control;
    } else if (is_byte_piece(piece)) {
      type = token_type::byte;
    }
    v.pieces.push_back(std::move(piece));
    v.scores.push_back(tok.score(id));
    v.token_types.push_back(type);
  }
  return v;
}

void convert_llama2c_to_gguf(const std::string& model_path, const std::string& tokenizer_path,
                             const std::string& out_path, dtype file_type,
                             const progress_fn& progress) {
  const model_weights weights = load_llama2c_checkpoint(model_path);
  const tokenizer tok = load_llama2c_tokenizer(tokenizer_path, weights.config.vocab_size);
  write_llama_gguf(out_path, weights.config, vocab_from_tokenizer(tok), file_type,
                   plans_from_weights(weights, file_type), progress);
}

} // namespace duet::engine
