#include "engine/gguf_format.hpp"

#include <array>

namespace duet::engine {

std::string gguf_type_name(std::uint32_t type) {
  static constexpr std::array<std::string_view, 13> names{"u8",  "i8",  "u16",  "i16",    "u32",
                                                          "i32", "f32", "bool", "string", "array",
                                                          "u64", "i64", "f64"};
  if (type < names.size()) return std::string{names[type]};
  return "type " + std::to_string(type);
}

std::size_t gguf_scalar_size(std::uint32_t type) {
  switch (static_cast<gguf_type>(type)) {
  case gguf_type::u8:
  case gguf_type::i8:
  case gguf_type::boolean:
    return 1;
  case gguf_type::u16:
  case gguf_type::i16:
    return 2;
  case gguf_type::u32:
  case gguf_type::i32:
  case gguf_type::f32:
    return 4;
  case gguf_type::u64:
  case gguf_type::i64:
  case gguf_type::f64:
    return 8;
  case gguf_type::string:
  case gguf_type::array:
    return 0;
  }
  return 0;
}

std::optional<ggml_type_traits> ggml_traits(std::uint32_t id) {
  // Sizes from ggml-common.h's block structs (checked by their static_asserts there).
  static constexpr std::array<ggml_type_traits, 15> known{{
      {0, "f32", 1, 4},
      {1, "f16", 1, 2},
      {2, "q4_0", 32, 18},
      {3, "q4_1", 32, 20},
      {6, "q5_0", 32, 22},
      {7, "q5_1", 32, 24},
      {8, "q8_0", 32, 34},
      {9, "q8_1", 32, 36},
      {10, "q2_K", 256, 84},
      {11, "q3_K", 256, 110},
      {12, "q4_K", 256, 144},
      {13, "q5_K", 256, 176},
      {14, "q6_K", 256, 210},
      {28, "f64", 1, 8},
      {30, "bf16", 1, 2},
  }};
  for (const auto& t : known)
    if (t.id == id) return t;
  return std::nullopt;
}

std::uint32_t ggml_type_of(dtype t) {
  switch (t) {
  case dtype::f32:
    return ggml_type_id::f32;
  case dtype::f16:
    return ggml_type_id::f16;
  case dtype::q8_0:
    return ggml_type_id::q8_0;
  }
  return ggml_type_id::f32;
}

std::optional<dtype> parse_dtype(std::string_view name) {
  for (dtype t : {dtype::f32, dtype::f16, dtype::q8_0})
    if (dtype_name(t) == name) return t;
  return std::nullopt;
}

std::optional<dtype> dtype_of_ggml(std::uint32_t id) {
  switch (id) {
  case ggml_type_id::f32:
    return dtype::f32;
  case ggml_type_id::f16:
    return dtype::f16;
  case ggml_type_id::q8_0:
    return dtype::q8_0;
  default:
    return std::nullopt;
  }
}

namespace {
constexpr std::string_view word_marker = "\xE2\x96\x81"; // U+2581 LOWER ONE EIGHTH BLOCK
}

std::string piece_from_gguf(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) {
    if (text.substr(i, word_marker.size()) == word_marker) {
      out.push_back(' ');
      i += word_marker.size();
    } else {
      out.push_back(text[i++]);
    }
  }
  return out;
}

std::string piece_to_gguf(std::string_view piece) {
  std::string out;
  out.reserve(piece.size());
  for (char c : piece) {
    if (c == ' ')
      out.append(word_marker);
    else
      out.push_back(c);
  }
  return out;
}

} // namespace duet::engine
