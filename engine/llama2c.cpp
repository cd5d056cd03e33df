// llama2.c legacy checkpoint loader: validate the header, check every tensor lies inside the
// file, then point tensor_views into the mapping.
#include "engine/llama2c.hpp"

#include "engine/error.hpp"
#include "engine/mapped_file.hpp"

#include <cstdint>
#include <cstring>
#include <string>

namespace duet::engine {

namespace {

// Bounds far above any real Llama (so nothing legitimate is refused) and low enough that
// every size computed from them fits comfortably in 64 bits.
constexpr int dim_max = 1 << 16;
constexpr int hidden_dim_max = 1 << 18;
constexpr int layers_max = 1024;
constexpr int heads_max = 1024;
constexpr int vocab_max = 1 << 22;
constexpr int seq_len_max = 1 << 20;

constexpr std::uint32_t llama2c_v1_magic = 0x616b3432; // "ak42", export.py --version 1/2

[[noreturn]] void bad(const std::string& path, const std::string& msg) {
  throw engine_error(engine_errc::bad_format, path + ": " + msg);
}

struct field {
  const char* name;
  int* value;
  int min;
  int max;
};

} // namespace

std::size_t llama2c_expected_bytes(const model_config& c, bool shared_classifier) {
  auto u = [](int v) { return static_cast<std::size_t>(v); };
  std::size_t hs = u(c.head_size());
  std::size_t floats = u(c.vocab_size) * u(c.dim)                       // embedding
                       + u(c.n_layers) * u(c.dim) * 2                   // rms_att, rms_ffn
                       + u(c.n_layers) * u(c.dim) * u(c.dim) * 2        // wq, wo
                       + u(c.n_layers) * u(c.dim) * u(c.kv_dim()) * 2   // wk, wv
                       + u(c.n_layers) * u(c.dim) * u(c.hidden_dim) * 3 // w1, w2, w3
                       + u(c.dim)                                       // rms_final
                       + u(c.seq_len) * hs;                             // legacy RoPE tables
  if (!shared_classifier) floats += u(c.vocab_size) * u(c.dim);
  return 7 * sizeof(std::int32_t) + floats * sizeof(float);
}

model_weights load_llama2c_checkpoint(const std::string& path) {
  auto file = mapped_file::open(path);
  constexpr std::size_t header_bytes = 7 * sizeof(std::int32_t);
  if (file->size() < header_bytes)
    bad(path, "truncated header: expected " + std::to_string(header_bytes) +
                  " bytes (7 x int32), file has " + std::to_string(file->size()));
  std::int32_t h[7];
  std::memcpy(h, file->data(), sizeof h);
  if (static_cast<std::uint32_t>(h[0]) == llama2c_v1_magic)
    throw engine_error(engine_errc::unsupported,
                       path + ": llama2.c version 1/2 export (magic \"ak42\") is not supported; "
                              "export with --version 0 (legacy) or convert to GGUF");

  model_config c;
  c.dim = h[0];
  c.hidden_dim = h[1];
  c.n_layers = h[2];
  c.n_heads = h[3];
  c.n_kv_heads = h[4];
  bool shared = h[5] > 0;
  // |INT_MIN| overflows: anything out of range is rejected below through vocab_size.
  c.vocab_size = h[5] == INT32_MIN ? 0 : (h[5] < 0 ? -h[5] : h[5]);
  c.seq_len = h[6];

  const field fields[] = {{"dim", &c.dim, 1, dim_max},
                          {"hidden_dim", &c.hidden_dim, 1, hidden_dim_max},
                          {"n_layers", &c.n_layers, 1, layers_max},
                          {"n_heads", &c.n_heads, 1, heads_max},
                          {"n_kv_heads", &c.n_kv_heads, 1, heads_max},
                          {"vocab_size", &c.vocab_size, 1, vocab_max},
                          {"seq_len", &c.seq_len, 1, seq_len_max}};
  int index = 0;
  for (const auto& f : fields) {
    if (*f.value < f.min || *f.value > f.max)
      bad(path, std::string{"header field "} + f.name + " (offset " + std::to_string(index * 4) +
                    ") is " + std::to_string(index == 5 ? h[5] : *f.value) + ", expected " +
                    std::to_string(f.min) + ".." + std::to_string(f.max));
    ++index;
  }
  if (c.dim % c.n_heads != 0)
    bad(path, "header: dim " + std::to_string(c.dim) + " is not a multiple of n_heads " +
                  std::to_string(c.n_heads));
  if (c.n_kv_heads > c.n_heads || c.n_heads % c.n_kv_heads != 0)
    bad(path, "header: n_heads " + std::to_string(c.n_heads) + " is not a multiple of n_kv_heads " +
                  std::to_string(c.n_kv_heads));
  if (c.head_size() % 2 != 0)
    bad(path,
        "header: head_size " + std::to_string(c.head_size()) + " is odd (RoPE rotates pairs)");

  std::size_t expected = llama2c_expected_bytes(c, shared);
  const auto* base = file->data();
  std::size_t offset = header_bytes;
  auto take = [&](const char* name, std::int64_t rows, std::int64_t cols) {
    std::size_t bytes = static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols) * 4;
    if (offset + bytes > file->size())
      bad(path, std::string{"tensor "} + name + " [" + std::to_string(rows) + "][" +
                    std::to_string(cols) + "] at offset " + std::to_string(offset) + " needs " +
                    std::to_string(bytes) + " bytes, past the end of the file (size " +
                    std::to_string(file->size()) + ", expected " + std::to_string(expected) + ")");
    tensor_view v{base + offset, dtype::f32, rows, cols};
    offset += bytes;
    return v;
  };

  model_weights w;
  w.config = c;
  w.source_path = path;
  const std::int64_t L = c.n_layers, D = c.dim, KV = c.kv_dim(), H = c.hidden_dim;
  w.layers.resize(static_cast<std::size_t>(L));
  w.token_embedding = take("token_embedding_table", c.vocab_size, D);
  // Stacked per-layer tensors: one view for the stack, then one per layer into it.
  auto stacked = [&](const char* name, std::int64_t rows, std::int64_t cols,
                     tensor_view layer_weights::*member) {
    tensor_view all = take(name, L * rows, cols);
    for (std::int64_t l = 0; l < L; ++l)
      w.layers[static_cast<std::size_t>(l)].*member =
          tensor_view{all.row(l * rows), dtype::f32, rows, cols};
  };
  stacked("rms_att_weight", 1, D, &layer_weights::rms_att);
  stacked("wq", D, D, &layer_weights::wq);
  stacked("wk", KV, D, &layer_weights::wk);
  stacked("wv", KV, D, &layer_weights::wv);
  stacked("wo", D, D, &layer_weights::wo);
  stacked("rms_ffn_weight", 1, D, &layer_weights::rms_ffn);
  stacked("w1", H, D, &layer_weights::w1);
  stacked("w2", D, H, &layer_weights::w2);
  stacked("w3", H, D, &layer_weights::w3);
  w.rms_final = take("rms_final_weight", 1, D);
  take("freq_cis_real", c.seq_len, c.head_size() / 2);
  take("freq_cis_imag", c.seq_len, c.head_size() / 2);
  w.classifier = shared ? w.token_embedding : take("wcls", c.vocab_size, D);
  if (offset != file->size())
    bad(path, std::to_string(file->size() - offset) + " unexpected bytes after the last tensor " +
                  "at offset " + std::to_string(offset) + " (expected file size " +
                  std::to_string(expected) + ", found " + std::to_string(file->size()) +
                  "): not a legacy llama2.c checkpoint?");
  w.storage = file;
  return w;
}

} // namespace duet::engine
