#pragma once

// Errors of the transport layer, as values. Every failure a caller can see has a code (what to
// do about it: retry, re-request, give up) and a context string (what and where, for humans).

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace duet::transport {

/// What went wrong. Numbering is stable (counters and logs index by it); append only.
enum class errc : std::uint8_t {
  ok = 0,
  timeout,             ///< nothing arrived / no credit came within the bound (silent or dead peer)
  peer_dead,           ///< the backend saw the peer go away (connection reset, CQ error)
  corrupt,             ///< payload checksum differs from the header's xxh3
  truncated,           ///< fewer (or more) payload bytes than the header announces
  duplicate,           ///< same (request, epoch, layer, token range) or stream sequence seen before
  out_of_order,        ///< stream sequence jumped ahead (a segment is missing)
  oversized,           ///< segment larger than segment_bytes_max or the receiver's window
  malformed,           ///< envelope bytes are not a valid message (Cap'n Proto or header check)
  backend_unavailable, ///< provider/device not present here (e.g. fabric+efa on a machine without
                       ///< EFA)
  bad_address,         ///< address string does not parse, or nothing listens there
  closed,              ///< the endpoint was closed
  internal,            ///< a backend call failed in a way none of the above describes
};

/// Number of errc values (for per-reason counters).
inline constexpr std::size_t errc_count = static_cast<std::size_t>(errc::internal) + 1;

/// Stable lower-case name: "timeout", "peer_dead", ...
std::string_view errc_name(errc e);

/// An error value: code plus context ("zmq recv from zmq+tcp://127.0.0.1:5555: ...").
struct error {
  errc code = errc::internal;
  std::string context;

  /// "<code name>: <context>".
  std::string to_string() const;
};

/// A value or an error (std::expected is C++23; this is the part we need).
template <class T>
class [[nodiscard]] result {
public:
  result(T value) : v_(std::in_place_index<0>, std::move(value)) {}
  result(error e) : v_(std::in_place_index<1>, std::move(e)) {}

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  const T& value() const& { return std::get<0>(v_); }
  T* operator->() { return &std::get<0>(v_); }
  T& operator*() & { return std::get<0>(v_); }
  const error& err() const { return std::get<1>(v_); }
  errc code() const { return ok() ? errc::ok : err().code; }

private:
  std::variant<T, error> v_;
};

/// Success or an error.
template <>
class [[nodiscard]] result<void> {
public:
  result() = default;
  result(error e) : err_(std::move(e)), ok_(false) {}

  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const error& err() const { return err_; }
  errc code() const { return ok_ ? errc::ok : err_.code; }

private:
  error err_{errc::ok, {}};
  bool ok_ = true;
};

/// Shorthand for the error branch: `return fail(errc::timeout, "no credit within 5000 ms");`.
inline error fail(errc code, std::string context) {
  return error{code, std::move(context)};
}

} // namespace duet::transport
