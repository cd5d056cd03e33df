// The GGUF writer on its own: every metadata type it writes reads back equal, a non-default
// alignment is recorded and honoured, and misuse fails without leaving a file behind.

#include "engine/gguf_reader.hpp"
#include "engine/gguf_writer.hpp"
#include "gguf_test_support.hpp"

#include <catch2/catch.hpp>

#include <filesystem>

using namespace duet::engine;

TEST_CASE("gguf_writer output reads back with its metadata, alignment and tensor bytes") {
  duet::test::temp_dir dir;
  const std::string path = dir.file("w.gguf");
  gguf_writer w(64);
  const std::vector<std::string> strings{"a", "", "\xE2\x96\x81x"};
  const std::vector<float> floats{1.5f, -2.0f};
  const std::vector<std::int32_t> ints{-7, 9, 11};
  w.add_string("s", "hello");
  w.add_u32("u", 4000000000u);
  w.add_i32("i", -5);
  w.add_f32("f", 0.25f);
  w.add_bool("b", true);
  w.add_string_array("sa", strings);
  w.add_f32_array("fa", floats);
  w.add_i32_array("ia", ints);
  w.add_tensor("t0", {32, 3}, ggml_type_id::f16);
  w.add_tensor("t1", {5}, ggml_type_id::f32);
  std::vector<std::uint8_t> t0(w.tensor_bytes(0)), t1(w.tensor_bytes(1));
  for (std::size_t i = 0; i < t0.size(); ++i) t0[i] = static_cast<std::uint8_t>(i * 7);
  for (std::size_t i = 0; i < t1.size(); ++i) t1[i] = static_cast<std::uint8_t>(i + 100);
  w.open(path);
  w.write(std::span(t0).first(10)); // in pieces
  w.write(std::span(t0).subspan(10));
  w.write(t1);
  w.close();
  REQUIRE_FALSE(std::filesystem::exists(path + ".partial"));

  const auto bytes = duet::test::read_bytes(path);
  CHECK(bytes.size() == w.file_bytes());
  const gguf_file f = parse_gguf(bytes, path);
  CHECK(f.alignment == 64);
  CHECK(f.data_offset % 64 == 0);
  CHECK(f.find("general.alignment")->uint_value == 64);
  CHECK(f.find("s")->string_value == "hello");
  CHECK(f.find("u")->uint_value == 4000000000u);
  CHECK(f.find("i")->as_integer() == -5);
  CHECK(f.find("f")->as_float() == 0.25);
  CHECK(f.find("b")->uint_value == 1);
  const auto* sa = f.find("sa");
  REQUIRE(sa->array_count == 3);
  CHECK(sa->array_strings[2] == strings[2]);
  CHECK(f.find("fa")->array_float(1) == -2.0);
  CHECK(f.find("ia")->array_integer(0) == -7);
  CHECK(f.find("ia")->array_integer(2) == 11);
  REQUIRE(f.tensors.size() == 2);
  CHECK(f.tensors[0].ne[0] == 32);
  CHECK(f.tensors[0].ne[1] == 3);
  CHECK(f.tensors[1].offset % 64 == 0);
  CHECK(std::memcmp(f.tensors[0].data, t0.data(), t0.size()) == 0);
  CHECK(std::memcmp(f.tensors[1].data, t1.data(), t1.size()) == 0);
}

TEST_CASE("gguf_writer refuses bad tensors and removes an unfinished file") {
  duet::test::temp_dir dir;
  const std::string path = dir.file("bad.gguf");
  {
    gguf_writer w;
    CHECK_THROWS_AS(w.add_tensor("q", {33, 2}, ggml_type_id::q8_0), engine_error); // 32 ∤ 33
    CHECK_THROWS_AS(w.add_tensor("z", {0}, ggml_type_id::f32), engine_error);
    CHECK_THROWS_AS(w.add_tensor("x", {4}, 99), engine_error);
    w.add_tensor("ok", {4}, ggml_type_id::f32);
    CHECK_THROWS_AS(w.add_tensor("ok", {4}, ggml_type_id::f32), engine_error); // duplicate
    w.open(path);
    const std::vector<std::uint8_t> data(8);
    w.write(data);
    CHECK(std::filesystem::exists(path + ".partial"));
    CHECK_THROWS_WITH(w.close(), Catch::Contains("closed before the data of tensor 'ok'"));
  }
  CHECK_FALSE(std::filesystem::exists(path));
  CHECK_FALSE(std::filesystem::exists(path + ".partial"));
  {
    gguf_writer w;
    w.add_tensor("ok", {2}, ggml_type_id::f32);
    w.open(path);
    const std::vector<std::uint8_t> data(12);
    CHECK_THROWS_WITH(w.write(data), Catch::Contains("more tensor data written than declared"));
  } // destroyed unfinished
  CHECK_FALSE(std::filesystem::exists(path + ".partial"));
  CHECK_FALSE(std::filesystem::exists(path));
}
