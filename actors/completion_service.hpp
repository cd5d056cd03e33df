#pragma once

// The boundary between the HTTP gateway (apps/) and the fabric (actors/): a request goes in
// with its prompt tokens and sampling parameters; tokens come back one at a time, each with its
// position, then exactly one end (finished or failed). The fabric implements it with actors
// (request actor -> prefill shards -> KV transfer -> decode lane); the gateway only sees this.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace duet::actors {

/// Sampling parameters of one request. temperature == 0 means greedy (argmax).
struct sampling_params {
  float temperature = 0.0f;
  float top_p = 1.0f;
  int top_k = 0;          ///< 0 = off
  std::uint64_t seed = 0; ///< used when temperature > 0
};

/// How a request should be placed (the policy decides under `automatic`).
enum class placement_mode : std::uint8_t { automatic, integrated, disaggregated };

struct completion_request {
  std::string request_id;         ///< unique, used in logs and metrics
  std::vector<int> prompt_tokens; ///< already tokenized, BOS included
  int max_tokens = 16;            ///< completion tokens at most
  sampling_params sampling;
  bool stop_at_eos = true;
  placement_mode placement = placement_mode::automatic;
  std::int64_t deadline_ms = 60000; ///< whole request, from submission
};

/// Why a request ended.
enum class finish_reason : std::uint8_t { length, stop, cancelled, error };

/// Error classes the gateway maps to HTTP statuses.
enum class service_error : std::uint8_t {
  none,
  bad_request,     ///< parameters out of range           -> 400
  prompt_too_long, ///< prompt + max_tokens > context      -> 413
  overloaded,      ///< admission queue full / deadline    -> 429
  no_capacity,     ///< no prefill or decode path placed   -> 503
  internal,        ///< a bug or an unrecoverable fault    -> 500
};

/// The single end of a request.
struct completion_result {
  finish_reason reason = finish_reason::length;
  service_error error = service_error::none;
  std::string error_message; ///< says what and where, for the client
  int prompt_tokens = 0;
  int completion_tokens = 0;
  bool disaggregated = false; ///< the placement that served it
  int restarts = 0;           ///< actor restarts the request survived
};

/// Callbacks run on a fabric thread; they must not block. `on_token` is called once per
/// position, in order, starting at position == prompt length; `on_done` exactly once, last.
struct completion_callbacks {
  std::function<void(int position, int token)> on_token;
  std::function<void(const completion_result&)> on_done;
};

/// What the gateway calls. Thread-safe.
class completion_service {
public:
  virtual ~completion_service() = default;

  /// Starts a request; its outcome arrives through `callbacks`.
  virtual void submit(completion_request request, completion_callbacks callbacks) = 0;

  /// Cancels a running request (client went away); its KV is freed; on_done reports cancelled.
  virtual void cancel(const std::string& request_id) = 0;

  /// True once at least one prefill path and one decode path are placed.
  virtual bool ready() const = 0;

  /// Maximum context (prompt + completion tokens) of the served model.
  virtual int context_length() const = 0;
};

} // namespace duet::actors
