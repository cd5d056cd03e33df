// Truncated and corrupt llama2.c checkpoints and tokenizers: a table of damages, each must be
// rejected with an engine_error whose message names the file and what was wrong.
#include "engine/error.hpp"
#include "engine/llama2c.hpp"
#include "engine/tokenizer.hpp"
#include "tests/engine/gguf_test_support.hpp"
#include "tests/support/models.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <vector>

using namespace duet::engine;

namespace {

std::vector<char> read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

std::string write_temp(const duet::test::temp_dir& dir, const std::string& name,
                       const std::vector<char>& bytes) {
  auto path = dir.file(name);
  std::ofstream(path, std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path;
}

/// Cuts `b` to `n` bytes (erase, not resize: g++ 12 -O1 warns falsely on resize here).
void shrink(std::vector<char>& b, std::size_t n) {
  b.erase(b.begin() + static_cast<std::ptrdiff_t>(std::min(n, b.size())), b.end());
}

void set_i32(std::vector<char>& b, std::size_t off, std::int32_t v) {
  std::memcpy(b.data() + off, &v, 4);
}

struct damage {
  const char* name;
  std::function<void(std::vector<char>&)> apply;
  engine_errc code;
  const char* says; ///< a fragment the message must contain
};

} // namespace

TEST_CASE("corrupt llama2.c checkpoints are rejected with errors naming what is wrong") {
  const auto good = read_all(duet::test::model_file("stories260K.bin"));
  REQUIRE(good.size() == 1056540);
  const std::vector<damage> table = {
      {"empty", [](auto& b) { b.clear(); }, engine_errc::bad_format, "truncated header"},
      {"truncated_header", [](auto& b) { shrink(b, 20); }, engine_errc::bad_format,
       "truncated header"},
      {"truncated_in_wq", [](auto& b) { shrink(b, 28 + 512 * 64 * 4 + 5 * 64 * 4 + 100); },
       engine_errc::bad_format, "tensor wq"},
      {"missing_last_bytes", [](auto& b) { shrink(b, b.size() - 4); }, engine_errc::bad_format,
       "past the end"},
      {"trailing_bytes",
       [](auto& b) {
         for (int i = 0; i < 8; ++i) b.push_back('\0');
       },
       engine_errc::bad_format, "unexpected bytes"},
      {"zero_dim", [](auto& b) { set_i32(b, 0, 0); }, engine_errc::bad_format, "dim"},
      {"negative_layers", [](auto& b) { set_i32(b, 8, -3); }, engine_errc::bad_format, "n_layers"},
      {"absurd_vocab", [](auto& b) { set_i32(b, 20, 2000000000); }, engine_errc::bad_format,
       "vocab_size"},
      {"int_min_vocab", [](auto& b) { set_i32(b, 20, INT32_MIN); }, engine_errc::bad_format,
       "vocab_size"},
      {"heads_not_dividing_dim", [](auto& b) { set_i32(b, 12, 7); }, engine_errc::bad_format,
       "not a multiple of n_heads"},
      {"kv_heads_not_dividing", [](auto& b) { set_i32(b, 16, 3); }, engine_errc::bad_format,
       "n_kv_heads"},
      {"absurd_seq_len", [](auto& b) { set_i32(b, 24, 1 << 30); }, engine_errc::bad_format,
       "seq_len"},
      {"unshared_classifier_missing", [](auto& b) { set_i32(b, 20, -512); },
       engine_errc::bad_format, "wcls"},
      {"version1_magic", [](auto& b) { set_i32(b, 0, 0x616b3432); }, engine_errc::unsupported,
       "version 1/2"},
  };
  const duet::test::temp_dir dir;
  for (const auto& d : table) {
    auto bytes = good;
    d.apply(bytes);
    auto path = write_temp(dir, std::string(d.name) + ".bin", bytes);
    INFO("damage " << d.name);
    try {
      load_llama2c_checkpoint(path);
      FAIL("accepted");
    } catch (const engine_error& e) {
      INFO(e.what());
      CHECK(e.code() == d.code);
      CHECK(std::string(e.what()).find(path) != std::string::npos);
      CHECK(std::string(e.what()).find(d.says) != std::string::npos);
    }
  }
  try {
    load_llama2c_checkpoint("/nonexistent/duet/model.bin");
    FAIL("accepted a missing file");
  } catch (const engine_error& e) {
    CHECK(e.code() == engine_errc::io_error);
    CHECK(std::string(e.what()).find("/nonexistent/duet/model.bin") != std::string::npos);
  }
}

TEST_CASE("corrupt llama2.c tokenizers are rejected with errors naming the entry") {
  const auto good = read_all(duet::test::model_file("tok512.bin"));
  REQUIRE_NOTHROW(load_llama2c_tokenizer(duet::test::model_file("tok512.bin"), 512));
  const std::vector<damage> table = {
      {"empty", [](auto& b) { b.clear(); }, engine_errc::bad_format, "truncated header"},
      {"bad_max_len", [](auto& b) { set_i32(b, 0, -1); }, engine_errc::bad_format,
       "max_token_length"},
      {"cut_in_entry", [](auto& b) { shrink(b, b.size() - 2); }, engine_errc::bad_format,
       "truncated"},
      {"bad_length", [](auto& b) { set_i32(b, 8, 1000); }, engine_errc::bad_format, "entry 0"},
  };
  const duet::test::temp_dir dir;
  for (const auto& d : table) {
    auto bytes = good;
    d.apply(bytes);
    auto path = write_temp(dir, std::string(d.name) + ".tok", bytes);
    INFO("damage " << d.name);
    try {
      load_llama2c_tokenizer(path, 512);
      FAIL("accepted");
    } catch (const engine_error& e) {
      INFO(e.what());
      CHECK(e.code() == d.code);
      CHECK(std::string(e.what()).find(d.says) != std::string::npos);
    }
  }
}
