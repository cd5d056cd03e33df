#pragma once

// The gateway's Prometheus metrics. They live in one prometheus::Registry shared with the
// cluster (which registers its KV, transfer, restart and placement metrics there), and
// GET /metrics serializes the whole registry in the text exposition format.

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>

namespace duet::apps {

/// How a request ended, as the `outcome` label of duet_requests_total.
/// length/stop/cancelled: served (cancelled = the client went away); the others are refusals
/// named after their HTTP status.
enum class request_outcome {
  length,
  stop,
  cancelled,
  bad_request,  ///< 400
  unauthorized, ///< 401
  not_found,    ///< 404 (unknown model)
  too_large,    ///< 413 (prompt longer than the context, or body over --max-body-bytes)
  overloaded,   ///< 429
  no_capacity,  ///< 503
  internal,     ///< 500
  count_
};

const char* outcome_label(request_outcome outcome);

class gateway_metrics {
public:
  explicit gateway_metrics(std::shared_ptr<prometheus::Registry> registry);

  void count(request_outcome outcome);
  void in_flight_add(double delta) { in_flight_->Increment(delta); }
  void observe_ttft(double seconds) { ttft_->Observe(seconds); }
  void observe_inter_token(double seconds) { inter_token_->Observe(seconds); }
  void observe_duration(double seconds) { duration_->Observe(seconds); }
  void add_tokens(int prompt, int completion);

  /// The registry in Prometheus text exposition format (version 0.0.4).
  std::string serialize() const;

  prometheus::Registry& registry() { return *registry_; }

private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Counter* outcomes_[static_cast<int>(request_outcome::count_)];
  prometheus::Gauge* in_flight_;
  prometheus::Histogram* ttft_;
  prometheus::Histogram* inter_token_;
  prometheus::Histogram* duration_;
  prometheus::Counter* prompt_tokens_;
  prometheus::Counter* completion_tokens_;
};

} // namespace duet::apps
