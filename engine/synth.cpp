#include "engine/synth.hpp"

#include "engine/error.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numbers>
#include <unordered_set>

namespace duet::engine {

namespace {

model_config make_config(int dim, int hidden, int layers, int heads, int kv_heads, int vocab,
                         int seq_len) {
  model_config c;
  c.dim = dim;
  c.hidden_dim = hidden;
  c.n_layers = layers;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.vocab_size = vocab;
  c.seq_len = seq_len;
  c.rms_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  return c;
}

/// splitmix64 (Steele, Lea, Flood 2014): a full-period mixer, used to derive per-row streams.
std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/// Fills n values with N(0, stddev) by Box-Muller from a stream seeded by (seed, tensor, row).
void normal_row(std::uint64_t seed, std::uint64_t tensor, std::uint64_t row, float stddev,
                float* out, std::size_t n) {
  std::uint64_t state = seed;
  state = splitmix64(state) ^ (tensor * 0xd1b54a32d192ed03ull);
  state = splitmix64(state) ^ (row * 0x8cb92ba72f3d8dd7ull);
  (void)splitmix64(state);
  constexpr double two_pi = 2.0 * std::numbers::pi;
  for (std::size_t i = 0; i < n; i += 2) {
    // u1 in (0, 1] so log(u1) is finite; 53-bit uniforms.
    const double u1 = (static_cast<double>(splitmix64(state) >> 11) + 1.0) * 0x1.0p-53;
    const double u2 = static_cast<double>(splitmix64(state) >> 11) * 0x1.0p-53;
    const double r = std::sqrt(-2.0 * std::log(u1)) * stddev;
    out[i] = static_cast<float>(r * std::cos(two_pi * u2));
    if (i + 1 < n) out[i + 1] = static_cast<float>(r * std::sin(two_pi * u2));
  }
}

} // namespace

const std::vector<synth_shape>& synth_shapes() {
  static const std::vector<synth_shape> shapes{
      {"stories15M", "llama2.c TinyStories 15M: dim 288, 6 layers, 6 heads",
       make_config(288, 768, 6, 6, 6, 32000, 256), true},
      {"stories110M", "llama2.c TinyStories 110M: dim 768, 12 layers, 12 heads",
       make_config(768, 2048, 12, 12, 12, 32000, 1024), true},
      {"llama-1b", "TinyLlama-1.1B shape: dim 2048, 22 layers, 32 heads, 4 KV heads (GQA)",
       make_config(2048, 5632, 22, 32, 4, 32000, 2048), false},
      {"tiny", "test shape: dim 64, 2 layers, 4 heads, 2 KV heads, vocab 512",
       make_config(64, 96, 2, 4, 2, 512, 128), false},
  };
  return shapes;
}

std::optional<synth_shape> find_synth_shape(std::string_view name) {
  for (const auto& s : synth_shapes())
    if (s.name == name) return s;
  return std::nullopt;
}

gguf_vocab synth_vocab(int vocab_size) {
  if (vocab_size < 259)
    throw engine_error(engine_errc::invalid_argument, "synth_vocab: vocab_size " +
                                                          std::to_string(vocab_size) +
                                                          " < 259 (3 special + 256 byte pieces)");
  gguf_vocab v;
  auto add = [&](std::string piece, std::int32_t type) {
    v.scores.push_back(type == token_type::normal ? -static_cast<float>(v.pieces.size() - 259)
                                                  : 0.0f);
    v.pieces.push_back(std::move(piece));
    v.token_types.push_back(type);
  };
  add("<unk>", token_type::unknown);
  add("<s>", token_type::control);
  add("</s>", token_type::control);
  for (int b = 0; b < 256; ++b) {
    char text[8];
    std::snprintf(text, sizeof text, "<0x%02X>", b);
    add(text, token_type::byte);
  }
  const auto n = static_cast<std::size_t>(vocab_size);
  std::unordered_set<std::string> seen;
  auto add_normal = [&](std::string piece) {
    if (v.pieces.size() < n && seen.insert(piece).second) add(std::move(piece), token_type::normal);
  };
  for (char c = ' '; c <= '~' && v.pieces.size() < n; ++c) add_normal(std::string(1, c));
  const std::string alphabet = " etaoinshrdlucmfwypvbgkjqxz";
  std::vector<std::string> grams{""};
  while (v.pieces.size() < n) {
    std::vector<std::string> longer;
    for (const auto& g : grams)
      for (char c : alphabet) {
        longer.push_back(g + c);
        if (longer.back().size() >= 2) add_normal(longer.back());
        if (v.pieces.size() >= n) break;
      }
    grams = std::move(longer);
  }
  return v;
}

void write_synth_model(const std::string& path, const synth_shape& shape, dtype file_type,
                       const synth_options& options, const progress_fn& progress) {
  const model_config& c = shape.config;
  auto plans = llama_tensor_plans(c, file_type, shape.tied_classifier);
  for (std::size_t i = 0; i < plans.size(); ++i) {
    tensor_plan& p = plans[i];
    if (p.vector) {
      const auto cols = p.cols;
      p.fill = [cols](std::int64_t, std::int64_t n_rows, float* out) {
        std::fill(out, out + n_rows * cols, 1.0f);
      };
      continue;
    }
    const auto cols = static_cast<std::size_t>(p.cols);
    p.fill = [seed = options.seed, stddev = options.stddev, tensor = i,
              cols](std::int64_t row0, std::int64_t n_rows, float* out) {
      for (std::int64_t r = 0; r < n_rows; ++r)
        normal_row(seed, tensor, static_cast<std::uint64_t>(row0 + r), stddev,
                   out + static_cast<std::size_t>(r) * cols, cols);
    };
  }
  write_llama_gguf(path, c, synth_vocab(c.vocab_size), file_type, std::move(plans), progress);
}

} // namespace duet::engine
