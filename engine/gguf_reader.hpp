#pragma once

// GGUF reader: parses a GGUF v2/v3 file held in memory (normally a read-only mmap) into views
// of its metadata and tensors, then maps a `llama`-architecture file onto model_weights
// without copying a weight. Every read is bounds-checked against the buffer; counts, lengths
// and dimensions are bounded before anything is allocated, with overflow-checked arithmetic,
// so a hostile file yields an engine_error, never a crash.

#include "engine/error.hpp"
#include "engine/gguf_format.hpp"
#include "engine/model_weights.hpp"

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace duet::engine {

/// One metadata value. Views point into the parsed buffer.
struct gguf_value {
  std::uint32_t type = 0;                   ///< gguf_type
  std::uint64_t offset = 0;                 ///< file offset of the value (after the key and type)
  std::uint64_t uint_value = 0;             ///< u8, u16, u32, u64, bool
  std::int64_t int_value = 0;               ///< i8, i16, i32, i64
  double float_value = 0.0;                 ///< f32, f64
  std::string_view string_value;            ///< string
  std::uint32_t array_type = 0;             ///< element gguf_type of an array
  std::uint64_t array_count = 0;            ///< elements of an array
  const std::uint8_t* array_data = nullptr; ///< numeric array: packed little-endian elements
  std::vector<std::string_view> array_strings; ///< string array: [array_count]

  bool is_array() const { return type == static_cast<std::uint32_t>(gguf_type::array); }
  /// A scalar integer or bool as int64 (nullopt for other types or a u64 above INT64_MAX).
  std::optional<std::int64_t> as_integer() const;
  /// A scalar f32/f64 (integers are not floats here: types are checked, not guessed).
  std::optional<double> as_float() const;
  /// Element i of a numeric array as int64 / double (caller checks i < array_count).
  std::int64_t array_integer(std::uint64_t i) const;
  double array_float(std::uint64_t i) const;
};

struct gguf_kv {
  std::string_view key;
  gguf_value value;
};

/// One tensor info, validated: known type, 1..4 dims, size within bounds, data inside the buffer.
struct gguf_tensor_info {
  std::string_view name;
  std::uint32_t n_dims = 0;
  std::array<std::uint64_t, gguf_max_dims> ne{1, 1, 1, 1}; ///< GGML order: ne[0] contiguous
  std::uint32_t type = 0;                                  ///< ggml type id
  std::uint64_t offset = 0;                                ///< relative to the data section
  std::uint64_t bytes = 0;                                 ///< size of the data
  std::uint64_t info_offset = 0; ///< file offset of this tensor info, for messages
  const std::uint8_t* data = nullptr;
};

/// A parsed GGUF file: views into the buffer it was parsed from (which must outlive it).
struct gguf_file {
  std::string source; ///< file name used in messages
  std::uint32_t version = 0;
  std::uint64_t alignment = gguf_default_alignment;
  std::uint64_t data_offset = 0; ///< file offset of the tensor data section
  std::uint64_t file_bytes = 0;
  std::vector<gguf_kv> metadata;
  std::vector<gguf_tensor_info> tensors;

  const gguf_value* find(std::string_view key) const;
  const gguf_tensor_info* find_tensor(std::string_view name) const;
};

/// Parses GGUF bytes. Throws engine_error (bad_format) naming `source`, the offset and the
/// expectation.
gguf_file parse_gguf(std::span<const std::uint8_t> bytes, std::string source);

/// Result of parse_gguf_bytes: an empty `error` means success.
struct gguf_parse_result {
  std::string error;
  std::size_t tensors = 0;
  std::size_t metadata = 0;
};

/// Fuzzing entry point: parses `size` bytes at `data` as a GGUF file and, if that succeeds, maps
/// it as a `llama` model and reads its vocabulary. Never throws: every failure is returned as
/// text. A libFuzzer target is `LLVMFuzzerTestOneInput(d, n) { parse_gguf_bytes(d, n); return 0;
/// }`.
gguf_parse_result parse_gguf_bytes(const std::uint8_t* data, std::size_t size) noexcept;

/// A `llama` GGUF model mapped into model_weights plus its vocabulary.
struct gguf_model {
  model_weights weights;
  gguf_vocab vocab;
};

/// Maps a parsed `llama` GGUF onto model_weights (views into the parsed buffer; `storage` is
/// left to the caller) and reads its tokenizer. Throws engine_error: bad_format for missing
/// or mis-shaped tensors and keys, unsupported for another architecture or tensor type.
gguf_model gguf_to_model(const gguf_file& file);

/// Memory-maps `path`, parses it and maps it. weights.storage keeps the mapping alive.
/// Throws engine_error (io_error when the file cannot be mapped, naming it).
gguf_model load_gguf_model(const std::string& path);

/// Reads only the vocabulary of a parsed GGUF (tokenizer.ggml.*).
gguf_vocab gguf_read_vocab(const gguf_file& file);

} // namespace duet::engine
