#pragma once

// The engine's one error type. Loaders, the KV cache and KV import throw it inside the engine;
// callers (apps, actors) catch it at their edge and turn `code()` + `what()` into an error value.
// `what()` always names the file / tensor / sequence, the offset or index, and expected vs found.

#include <stdexcept>
#include <string>
#include <string_view>

namespace duet::engine {

/// What kind of failure, so a caller can map it without parsing text.
enum class engine_errc {
  io_error = 1,     ///< a file could not be opened, read or mapped
  bad_format,       ///< a file is truncated, corrupt, or has absurd values
  unsupported,      ///< well-formed input the engine does not handle (type, architecture)
  invalid_argument, ///< a caller passed an out-of-range id, position, layer or size
  out_of_capacity,  ///< a bound was hit (KV blocks not reserved, batch too large)
  mismatch,         ///< data does not fit its destination (KV segment vs cache shape/dtype)
};

/// Stable name of a code: "io_error", "bad_format", ...
constexpr std::string_view engine_errc_name(engine_errc c) {
  switch (c) {
  case engine_errc::io_error:
    return "io_error";
  case engine_errc::bad_format:
    return "bad_format";
  case engine_errc::unsupported:
    return "unsupported";
  case engine_errc::invalid_argument:
    return "invalid_argument";
  case engine_errc::out_of_capacity:
    return "out_of_capacity";
  case engine_errc::mismatch:
    return "mismatch";
  }
  return "?";
}

/// Thrown by the engine; `what()` is the full message, `code()` the category.
class engine_error : public std::runtime_error {
public:
  engine_error(engine_errc code, const std::string& message)
      : std::runtime_error(message), code_(code) {}

  engine_errc code() const noexcept { return code_; }

private:
  engine_errc code_;
};

} // namespace duet::engine
