#include "apps/metrics.hpp"

#include <prometheus/text_serializer.h>

namespace duet::apps {

const char* outcome_label(request_outcome outcome) {
  switch (outcome) {
  case request_outcome::length:
    return "length";
  case request_outcome::stop:
    return "stop";
  case request_outcome::cancelled:
    return "cancelled";
  case request_outcome::bad_request:
    return "bad_request";
  case request_outcome::unauthorized:
    return "unauthorized";
  case request_outcome::not_found:
    return "not_found";
  case request_outcome::too_large:
    return "too_large";
  case request_outcome::overloaded:
    return "overloaded";
  case request_outcome::no_capacity:
    return "no_capacity";
  case request_outcome::internal:
    return "internal";
  case request_outcome::count_:
    break;
  }
  return "internal";
}

gateway_metrics::gateway_metrics(std::shared_ptr<prometheus::Registry> registry)
    : registry_(std::move(registry)) {
  auto& outcomes = prometheus::BuildCounter()
                       .Name("duet_requests_total")
                       .Help("Completion requests by how they ended")
                       .Register(*registry_);
  // Every label value exists from the start, so a dashboard sees zeros rather than gaps.
  for (int i = 0; i < static_cast<int>(request_outcome::count_); ++i)
    outcomes_[i] = &outcomes.Add({{"outcome", outcome_label(static_cast<request_outcome>(i))}});
  in_flight_ = &prometheus::BuildGauge()
                    .Name("duet_requests_in_flight")
                    .Help("Completion requests admitted and not yet answered")
                    .Register(*registry_)
                    .Add({});
  // TTFT on CPU ranges from ~1 ms (tiny model, short prompt) to seconds (long prompts, queues).
  ttft_ =
      &prometheus::BuildHistogram()
           .Name("duet_time_to_first_token_seconds")
           .Help("From request admission to the first completion token")
           .Register(*registry_)
           .Add({}, prometheus::Histogram::BucketBoundaries{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                            0.1, 0.25, 0.5, 1, 2.5, 5, 10});
  inter_token_ = &prometheus::BuildHistogram()
                      .Name("duet_inter_token_latency_seconds")
                      .Help("Between consecutive completion tokens of one request")
                      .Register(*registry_)
                      .Add({}, prometheus::Histogram::BucketBoundaries{
                                   0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                   0.1, 0.25, 0.5, 1});
  duration_ = &prometheus::BuildHistogram()
                   .Name("duet_request_duration_seconds")
                   .Help("From request admission to its last byte")
                   .Register(*registry_)
                   .Add({}, prometheus::Histogram::BucketBoundaries{
                                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60});
  auto& tokens = prometheus::BuildCounter()
                     .Name("duet_tokens_total")
                     .Help("Tokens of served requests, by kind")
                     .Register(*registry_);
  prompt_tokens_ = &tokens.Add({{"kind", "prompt"}});
  completion_tokens_ = &tokens.Add({{"kind", "completion"}});
}

void gateway_metrics::count(request_outcome outcome) {
  outcomes_[static_cast<int>(outcome)]->Increment();
}

void gateway_metrics::add_tokens(int prompt, int completion) {
  prompt_tokens_->Increment(prompt);
  completion_tokens_->Increment(completion);
}

std::string gateway_metrics::serialize() const {
  return prometheus::TextSerializer{}.Serialize(registry_->Collect());
}

} // namespace duet::apps
