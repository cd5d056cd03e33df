#pragma once

// Helpers shared by the GGUF tests: whole-file I/O, a private temp folder, and an independent
// plain reader of llama2.c checkpoints and tokenizers (so the GGUF side is checked against the
// bytes of the .bin files, not against another loader of ours).

#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace duet::test {

inline std::vector<std::uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void write_bytes(const std::string& path, const std::vector<std::uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  REQUIRE(out);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out);
}

/// A fresh folder under the system temp dir, removed when the test ends.
class temp_dir {
public:
  temp_dir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("duet-gguf-test-" + std::to_string(rd()) + "-" + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  std::string file(const std::string& name) const { return (path_ / name).string(); }

private:
  std::filesystem::path path_;
};

/// The float arrays of a legacy llama2.c checkpoint, in file order, by llama2.c's names.
struct llama2c_arrays {
  int dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
  std::vector<float> token_embedding; // [vocab][dim]
  std::vector<float> rms_att;         // [layers][dim]
  std::vector<float> wq, wk, wv, wo;  // [layers][out][in]
  std::vector<float> rms_ffn;         // [layers][dim]
  std::vector<float> w1, w2, w3;      // [layers][out][in]
  std::vector<float> rms_final;       // [dim]
};

inline llama2c_arrays read_llama2c(const std::string& path) {
  auto bytes = read_bytes(path);
  llama2c_arrays a{};
  REQUIRE(bytes.size() >= 28);
  int header[7];
  std::memcpy(header, bytes.data(), sizeof header);
  a.dim = header[0];
  a.hidden_dim = header[1];
  a.n_layers = header[2];
  a.n_heads = header[3];
  a.n_kv_heads = header[4];
  a.vocab_size = header[5] < 0 ? -header[5] : header[5];
  a.seq_len = header[6];
  std::size_t pos = 28;
  auto take = [&](std::size_t n) {
    REQUIRE(pos + n * 4 <= bytes.size());
    std::vector<float> v(n);
    std::memcpy(v.data(), bytes.data() + pos, n * 4);
    pos += n * 4;
    return v;
  };
  const std::size_t L = static_cast<std::size_t>(a.n_layers), d = static_cast<std::size_t>(a.dim);
  const std::size_t h = static_cast<std::size_t>(a.hidden_dim);
  const std::size_t kv = static_cast<std::size_t>(a.n_kv_heads) * (d / a.n_heads);
  a.token_embedding = take(static_cast<std::size_t>(a.vocab_size) * d);
  a.rms_att = take(L * d);
  a.wq = take(L * d * d);
  a.wk = take(L * kv * d);
  a.wv = take(L * kv * d);
  a.wo = take(L * d * d);
  a.rms_ffn = take(L * d);
  a.w1 = take(L * h * d);
  a.w2 = take(L * d * h);
  a.w3 = take(L * h * d);
  a.rms_final = take(d);
  return a;
}

struct llama2c_vocab {
  std::vector<std::string> pieces;
  std::vector<float> scores;
};

inline llama2c_vocab read_llama2c_vocab(const std::string& path, int vocab_size) {
  auto bytes = read_bytes(path);
  llama2c_vocab v;
  std::size_t pos = 4;
  for (int i = 0; i < vocab_size; ++i) {
    REQUIRE(pos + 8 <= bytes.size());
    float score;
    std::int32_t len;
    std::memcpy(&score, bytes.data() + pos, 4);
    std::memcpy(&len, bytes.data() + pos + 4, 4);
    pos += 8;
    REQUIRE(pos + static_cast<std::size_t>(len) <= bytes.size());
    v.scores.push_back(score);
    v.pieces.emplace_back(reinterpret_cast<const char*>(bytes.data() + pos),
                          static_cast<std::size_t>(len));
    pos += static_cast<std::size_t>(len);
  }
  return v;
}

/// True when `n` floats at `data` equal `expected` bit for bit.
inline bool same_bytes(const void* data, const float* expected, std::size_t n) {
  return std::memcmp(data, expected, n * sizeof(float)) == 0;
}

} // namespace duet::test
