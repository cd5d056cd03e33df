#pragma once

// Reading Cap'n Proto bytes that came from the network, safely: every reader here returns a
// value or a `problem` with context; no kj::Exception escapes. Limits are deliberate:
//
// - traversal limit: Cap'n Proto counts every word a reader visits (Data bytes included) and
//   throws past the limit, which bounds the work a hostile message can cause ("amplification").
//   Control frames are small: 1 MiB of words is ample (a prompt of 100k token ids is 400 KB).
//   A KV segment with its payload inline needs segment_bytes_max plus a little for the header;
//   kv_limits() sizes it so, and nothing larger is readable.
// - nesting limit 16: our schema nests at most 3 deep.
// - alignment: readers need 8-byte-aligned words; misaligned input (small zmq frames) is copied
//   into aligned storage first (one copy of a few hundred bytes; the payload never is).

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/array.h>
#include <kj/exception.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace duet::messages {

/// Why bytes could not be read as a message.
enum class problem_kind : std::uint8_t {
  malformed, ///< not a valid message, or a field fails validation
  truncated, ///< the bytes end before the message does
  oversized, ///< the message exceeds the traversal limit (or a size limit)
};

struct problem {
  problem_kind kind = problem_kind::malformed;
  std::string context;
};

/// A decoded value or the problem that prevented it.
template <class T>
class [[nodiscard]] decoded {
public:
  decoded(T value) : v_(std::in_place_index<0>, std::move(value)) {}
  decoded(problem p) : v_(std::in_place_index<1>, std::move(p)) {}

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  const T& value() const& { return std::get<0>(v_); }
  T* operator->() { return &std::get<0>(v_); }
  T& operator*() & { return std::get<0>(v_); }
  const problem& why() const { return std::get<1>(v_); }

private:
  std::variant<T, problem> v_;
};

/// Reader limits (see the top of this file for why these numbers).
struct read_limits {
  std::uint64_t traversal_words = (std::uint64_t{1} << 20) / 8;
  unsigned nesting = 16;
};

/// For control frames and envelopes whose payload is not inline.
inline constexpr read_limits control_limits{};

/// For a KV segment carrying up to segment_bytes_max payload bytes inline: the payload words
/// plus 64 KiB for the header and pointers.
inline read_limits kv_limits(std::size_t segment_bytes_max) {
  return read_limits{(segment_bytes_max + (std::size_t{64} << 10)) / 8, 16};
}

/// Maps a kj exception from a reader to a problem.
problem problem_from(const kj::Exception& e, std::string_view what);

/// Single-segment-or-flat bytes prepared for a reader: aligned in place, or copied when not.
class aligned_words {
public:
  /// Prepares `bytes`; sets *copied when a copy was needed (misaligned input).
  explicit aligned_words(std::span<const std::byte> bytes, bool* copied = nullptr);
  kj::ArrayPtr<const capnp::word> words() const { return words_; }
  /// Bytes past the last whole word (a flat message is a whole number of words).
  std::size_t trailing_bytes() const { return trailing_; }

private:
  kj::Array<capnp::word> copy_;
  kj::ArrayPtr<const capnp::word> words_;
  std::size_t trailing_ = 0;
};

/// Reads a flat (segment-table-prefixed) message in `bytes` and calls fn(Root::Reader),
/// which returns decoded<T>. Any kj::Exception (bad pointers, out-of-bounds, limit) becomes
/// a problem naming `what`. The reader and the bytes live only during fn.
template <class Root, class Fn>
auto read_flat(std::span<const std::byte> bytes, read_limits limits, std::string_view what, Fn&& fn)
    -> decltype(fn(std::declval<typename Root::Reader>())) {
  using out = decltype(fn(std::declval<typename Root::Reader>()));
  aligned_words aligned(bytes);
  if (aligned.trailing_bytes() != 0)
    return out(
        problem{problem_kind::truncated, std::string(what) + ": " + std::to_string(bytes.size()) +
                                             " bytes is not a whole number of 8-byte words"});
  if (aligned.words().size() == 0)
    return out(problem{problem_kind::truncated, std::string(what) + ": empty message"});
  try {
    capnp::ReaderOptions options;
    options.traversalLimitInWords = limits.traversal_words;
    options.nestingLimit = static_cast<int>(limits.nesting);
    capnp::FlatArrayMessageReader reader(aligned.words(), options);
    return fn(reader.getRoot<Root>());
  } catch (const kj::Exception& e) {
    return out(problem_from(e, what));
  }
}

/// A builder's message as flat bytes (segment table + segments): one copy, for small
/// messages; KV payloads use the segment form (stream_frame_segments) instead.
std::vector<std::byte> flat_bytes(capnp::MessageBuilder& builder);

} // namespace duet::messages
