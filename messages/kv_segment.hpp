#pragma once

// The KV segment header: what a decode node needs to know about one block of KV bytes before it
// trusts them. The bytes themselves travel beside the header (inline in the Cap'n Proto message,
// as a separate zero-copy frame, or written by RMA into receiver memory); the header says how
// many there are and what their xxh3-64 is. Wire form: KvSegment in messages/duet.capnp.
//
// Payload layout (what every sender and receiver agrees on): K then V, each
// (token_end - token_begin, n_kv_heads, head_size) elements of `dtype`, rows contiguous.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>

namespace duet::messages {

/// Element type of the KV bytes. Same numbering as engine::dtype (messages/ may not include
/// engine/, so the enum is repeated; a static_assert in actors/ may tie them together).
enum class kv_dtype : std::uint8_t { f32 = 0, f16 = 1, q8_0 = 2 };

/// The identity and shape of one layer's KV for one token range of one request.
struct kv_segment_header {
  std::uint64_t request_id = 0;
  std::uint32_t epoch = 0;       ///< bumped when a request is re-placed; older epochs are stale
  std::uint32_t layer = 0;       ///< model layer index
  std::uint32_t token_begin = 0; ///< first position, inclusive
  std::uint32_t token_end = 0;   ///< last position, exclusive
  kv_dtype dtype = kv_dtype::f32;
  std::uint32_t n_kv_heads = 0;
  std::uint32_t head_size = 0;
  std::uint64_t checksum_xxh3 = 0; ///< XXH3_64bits of the payload bytes
  std::uint64_t payload_bytes = 0; ///< length of the payload (K then V)

  friend bool operator==(const kv_segment_header&, const kv_segment_header&) = default;
};

/// Bytes of K plus V for this shape: 2 * tokens * n_kv_heads * row_bytes(head_size), or
/// nullopt when the shape is impossible (q8_0 head_size not a multiple of 32, overflow).
std::optional<std::uint64_t> kv_payload_bytes(const kv_segment_header& h);

/// Checks the header on its own: token range ordered and non-empty, dtype known, shape
/// consistent with payload_bytes. Returns an empty string when valid, else what is wrong.
std::string kv_header_problem(const kv_segment_header& h);

/// XXH3-64 of bytes (the checksum every KV segment carries).
std::uint64_t checksum_xxh3(std::span<const std::byte> bytes);

/// XXH3-64 of bytes that come in pieces (a payload copied frame by frame): digest() is
/// checksum_xxh3 of the pieces' concatenation. Hashing each piece right after copying it reads
/// it from cache instead of memory.
class checksum_xxh3_stream {
public:
  checksum_xxh3_stream();
  ~checksum_xxh3_stream();
  checksum_xxh3_stream(const checksum_xxh3_stream&) = delete;
  checksum_xxh3_stream& operator=(const checksum_xxh3_stream&) = delete;

  /// Starts again from no bytes.
  void reset();
  void update(std::span<const std::byte> bytes);
  std::uint64_t digest() const;

private:
  struct state;
  std::unique_ptr<state> state_;
};

} // namespace duet::messages
