#pragma once

// The fabric's errors as values. Every failure that crosses an actor boundary travels as a
// caf::error of category "duet" whose context is a text that says what failed and where; the
// request actor turns it into the gateway's service_error at the edge (completion_service.hpp).

#include "actors/completion_service.hpp"

#include <caf/atom.hpp>
#include <caf/error.hpp>

#include <cstdint>
#include <string>

namespace caf {
class actor_system_config;
} // namespace caf

namespace duet::actors {

/// What went wrong in the fabric. Values are stable: they cross process boundaries.
enum class fabric_errc : std::uint8_t {
  none = 0,
  bad_request = 1,        ///< a parameter out of range
  prompt_too_long = 2,    ///< prompt + max_tokens exceeds the model's context
  overloaded = 3,         ///< a bounded queue or pool stayed full until the deadline
  no_capacity = 4,        ///< no live node can take the prefill or the decode
  does_not_fit = 5,       ///< weights + KV budget exceed a node's memory
  actor_crashed = 6,      ///< a prefill shard or decode lane died under a request
  retries_exhausted = 7,  ///< bounded retries used up
  kv_corrupt = 8,         ///< a KV segment's checksum did not match
  kv_timeout = 9,         ///< KV segments did not arrive in time
  deadline_exceeded = 10, ///< the request's deadline passed
  cancelled = 11,         ///< the client went away
  engine_failure = 12,    ///< the engine refused (pool exhausted, bad shape, ...)
  transport_failure = 13, ///< the KV transport failed
  injected_fault = 14,    ///< the fault injector killed this actor on purpose
  protocol = 15,          ///< a message out of order or malformed
};

/// Short name of a code, e.g. "kv_corrupt".
std::string to_string(fabric_errc code);

/// The CAF category atom of fabric errors.
using duet_error_atom = caf::atom_constant<caf::atom("duet")>;

/// A fabric error carrying `context` (what failed and where).
caf::error make_error(fabric_errc code, std::string context);

/// The fabric code of `err`, or none when `err` is of another category (then see
/// `is_fabric_error`).
fabric_errc fabric_code(const caf::error& err);

/// The context text of a fabric error ("" otherwise).
std::string error_context(const caf::error& err);

/// "kv_corrupt: segment layer 3 of r7 epoch 1" for fabric errors, CAF's rendering otherwise.
std::string describe(const caf::error& err);

/// Maps a fabric error onto what the gateway reports to clients.
service_error to_service_error(fabric_errc code);

/// Registers the "duet" error category (and its renderer) with a CAF configuration.
void add_fabric_error_category(caf::actor_system_config& cfg);

} // namespace duet::actors
