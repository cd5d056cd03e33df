#pragma once

// Constants and small types of the GGUF file format shared by the reader and the writer.
// Follows ggml's docs/gguf.md (GGUF v3): a header (magic "GGUF", version, tensor count, KV
// count), typed metadata key/value pairs, tensor infos (name, dims in GGML order, ggml type,
// offset relative to the data section), padding to `general.alignment`, then tensor data.

#include "engine/dtype.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace duet::engine {

// -- file layout constants --------------------------------------------------------------------

/// "GGUF" read as a little-endian uint32.
constexpr std::uint32_t gguf_magic = 0x46554747u;
/// The version this project writes; the reader takes 2 and 3 (same layout, v3 added
/// big-endian files, which are recognised and refused).
constexpr std::uint32_t gguf_version = 3;
/// Alignment of tensor data when `general.alignment` is absent.
constexpr std::uint64_t gguf_default_alignment = 32;
/// ggml's GGML_MAX_DIMS.
constexpr std::uint32_t gguf_max_dims = 4;
/// ggml's GGML_MAX_NAME (a tensor name must be shorter than this).
constexpr std::size_t gguf_max_tensor_name = 64;

/// Metadata value types (gguf.md, `gguf_metadata_value_type`).
enum class gguf_type : std::uint32_t {
  u8 = 0,
  i8 = 1,
  u16 = 2,
  i16 = 3,
  u32 = 4,
  i32 = 5,
  f32 = 6,
  boolean = 7,
  string = 8,
  array = 9,
  u64 = 10,
  i64 = 11,
  f64 = 12,
};

/// "u32", "string", ... for messages; "type N" for values outside the enum.
std::string gguf_type_name(std::uint32_t type);

/// Size in bytes of one scalar value of `type`, 0 for string/array/unknown.
std::size_t gguf_scalar_size(std::uint32_t type);

// -- ggml tensor types ------------------------------------------------------------------------

/// ggml type ids (ggml.h `enum ggml_type`) that duet reads as weights.
namespace ggml_type_id {
constexpr std::uint32_t f32 = 0;
constexpr std::uint32_t f16 = 1;
constexpr std::uint32_t q8_0 = 8;
} // namespace ggml_type_id

/// Block geometry of a ggml tensor type: `block_values` values take `block_bytes` bytes.
struct ggml_type_traits {
  std::uint32_t id = 0;
  std::string_view name;
  std::uint32_t block_values = 0;
  std::uint32_t block_bytes = 0;
};

/// Traits of a ggml type id that this reader knows the size of (F32, F16, BF16, the legacy
/// and K quantizations), or nullopt for an unknown id. Knowing the size of types duet does not
/// compute with lets the parser validate a whole file and name the unsupported tensor.
std::optional<ggml_type_traits> ggml_traits(std::uint32_t id);

/// ggml type id of a duet dtype (f32 -> 0, f16 -> 1, q8_0 -> 8).
std::uint32_t ggml_type_of(dtype t);

/// dtype named "f32", "f16" or "q8_0" (as dtype_name spells them), else nullopt.
std::optional<dtype> parse_dtype(std::string_view name);

/// duet dtype of a ggml type id, nullopt for any type duet cannot compute with.
std::optional<dtype> dtype_of_ggml(std::uint32_t id);

// -- tokenizer data ---------------------------------------------------------------------------

/// SentencePiece-style token types (llama.cpp's llama_token_type / gguf token_type).
namespace token_type {
constexpr std::int32_t normal = 1;
constexpr std::int32_t unknown = 2;
constexpr std::int32_t control = 3;
constexpr std::int32_t user_defined = 4;
constexpr std::int32_t unused = 5;
constexpr std::int32_t byte = 6;
} // namespace token_type

/// A vocabulary as stored in a GGUF `llama` tokenizer, with pieces in llama2.c's spelling:
/// the SentencePiece word marker U+2581 is a plain space and byte tokens keep their
/// "<0xXX>" text. Index = token id.
struct gguf_vocab {
  std::vector<std::string> pieces;       ///< [vocab_size]
  std::vector<float> scores;             ///< [vocab_size] merge priority, higher merges first
  std::vector<std::int32_t> token_types; ///< [vocab_size] token_type::*
  int bos_id = 1;
  int eos_id = 2;
  int unk_id = 0;
  bool add_bos = true;          ///< tokenizer.ggml.add_bos_token (llama.cpp default for SPM)
  bool add_space_prefix = true; ///< tokenizer.ggml.add_space_prefix (default for SPM)
};

/// "▁" (U+2581) -> " " in a GGUF piece.
std::string piece_from_gguf(std::string_view text);
/// " " -> "▁" (U+2581), the inverse, for writing.
std::string piece_to_gguf(std::string_view piece);

} // namespace duet::engine
