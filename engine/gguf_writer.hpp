#pragma once

// GGUF v3 writer, streaming: metadata and tensor infos are declared first (offsets follow from
// shapes and types, laid out as ggml's gguf writer does: in declaration order, each tensor's
// data padded to the alignment), then the header is written and tensor data is appended in
// pieces, so a multi-GB model never has to be in memory at once.

#include "engine/dtype.hpp"
#include "engine/gguf_format.hpp"

#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace duet::engine {

class gguf_writer {
public:
  explicit gguf_writer(std::uint64_t alignment = gguf_default_alignment);
  ~gguf_writer();
  gguf_writer(const gguf_writer&) = delete;
  gguf_writer& operator=(const gguf_writer&) = delete;

  // -- declaration (before open) -------------------------------------------------------------

  void add_string(std::string_view key, std::string_view value);
  void add_u32(std::string_view key, std::uint32_t value);
  void add_i32(std::string_view key, std::int32_t value);
  void add_f32(std::string_view key, float value);
  void add_bool(std::string_view key, bool value);
  void add_string_array(std::string_view key, std::span<const std::string> values);
  void add_f32_array(std::string_view key, std::span<const float> values);
  void add_i32_array(std::string_view key, std::span<const std::int32_t> values);

  /// Declares the next tensor: `ne` in GGML order (ne[0] contiguous), `ggml_type` an id whose
  /// size ggml_traits knows. Throws engine_error(invalid_argument) for a bad shape or type.
  void add_tensor(std::string_view name, std::vector<std::uint64_t> ne, std::uint32_t ggml_type);

  /// Bytes of the file before the data section (header, metadata, infos, padding).
  std::vector<std::uint8_t> header_bytes() const;
  /// Size of the finished file.
  std::uint64_t file_bytes() const;
  /// Data bytes of declared tensor i (without padding).
  std::uint64_t tensor_bytes(std::size_t i) const { return tensors_.at(i).bytes; }
  std::size_t tensor_count() const { return tensors_.size(); }

  // -- output --------------------------------------------------------------------------------

  /// Creates `path`.partial and writes everything before the data section; close() renames it
  /// to `path`, and a writer destroyed before that removes it. Throws engine_error(io_error).
  void open(const std::string& path);
  /// Appends bytes of the current tensor's data (tensors in declaration order; a tensor's data
  /// may come in any number of pieces). Throws invalid_argument past the declared sizes.
  void write(std::span<const std::uint8_t> bytes);
  /// Checks every tensor was written in full, flushes and closes. Throws engine_error.
  void close();

private:
  struct tensor_decl {
    std::string name;
    std::vector<std::uint64_t> ne;
    std::uint32_t type;
    std::uint64_t offset; ///< relative to the data section
    std::uint64_t bytes;
  };
  void key(std::string_view k, gguf_type type);
  void put_string(std::vector<std::uint8_t>& out, std::string_view s) const;
  void pad_current();
  void put_raw(const void* p, std::size_t n);
  std::string partial_path() const;

  std::uint64_t alignment_;
  std::uint64_t kv_count_ = 0;
  std::vector<std::uint8_t> kv_bytes_; ///< encoded metadata, in declaration order
  std::vector<tensor_decl> tensors_;
  std::uint64_t data_bytes_ = 0; ///< padded size of the data section

  std::FILE* out_ = nullptr;
  std::string path_;
  std::size_t current_ = 0;         ///< tensor being written
  std::uint64_t current_bytes_ = 0; ///< bytes of it written so far
};

// -- row codecs ---------------------------------------------------------------------------------

/// Encodes n f32 values as `t` into `out` (row_bytes(t, n) bytes). q8_0 follows ggml's
/// quantize_row_q8_0_ref exactly: per block of 32, d = amax / 127, q = round(x * (1/d)),
/// d stored as f16. n % 32 == 0 for q8_0.
void encode_row(const float* x, std::size_t n, dtype t, std::uint8_t* out);

/// Decodes n values of type `t` at `in` to f32 (value = d * q for q8_0).
void decode_row(const std::uint8_t* in, std::size_t n, dtype t, float* out);

} // namespace duet::engine
