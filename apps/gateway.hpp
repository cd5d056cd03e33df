#pragma once

// The HTTP gateway of `duet serve`: an OpenAI-compatible API (completions, chat completions,
// models, health, readiness, Prometheus metrics) in front of a completion_service. The gateway
// tokenizes, validates, admits (bounded concurrency), streams tokens as server-sent events and
// maps every failure to OpenAI's error shape; the fabric behind completion_service does the rest.
//
// Threads: cpp-httplib serves each connection on a pool thread (max_concurrent + a few, so a
// streaming request never waits for a thread); fabric callbacks only append to a per-request
// queue under a mutex and notify, so they never block.

#include "actors/completion_service.hpp"
#include "apps/openai_text.hpp"

#include <prometheus/registry.h>
#include <spdlog/logger.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace duet::apps {

/// The model's tokenizer as the gateway needs it.
struct text_codec {
  std::function<std::vector<int>(std::string_view text, bool add_bos)> encode;
  piece_decoder decode;
  int bos_id = 1;
  int eos_id = 2;
  int vocab_size = 0;
};

struct gateway_options {
  std::string host = "127.0.0.1";
  int port = 8000; ///< 0 = any free port (bind() returns it)
  std::string model_name = "duet";
  std::vector<std::string> api_keys; ///< empty = no authentication
  int max_concurrent = 128;          ///< completion requests in flight; beyond: 429
  std::size_t max_body_bytes = 1 << 20;
  int max_tokens = 4096; ///< per-request cap on max_tokens (beyond: 400)
  actors::placement_mode placement = actors::placement_mode::automatic;
  std::int64_t request_timeout_ms = 120000; ///< whole request (the fabric's deadline)
  int retry_after_s = 1;                    ///< Retry-After of 429 and 503
};

class gateway {
public:
  gateway(gateway_options options, actors::completion_service& service, text_codec codec,
          std::shared_ptr<prometheus::Registry> registry, std::shared_ptr<spdlog::logger> logger);
  ~gateway();
  gateway(const gateway&) = delete;
  gateway& operator=(const gateway&) = delete;

  /// Binds the listening socket; returns the port (the chosen one when options.port == 0).
  /// Throws std::runtime_error naming host and port when it cannot bind.
  int bind();

  /// Serves until stop(); returns after the listening socket is closed.
  void serve();

  /// Stops accepting, ends running streams with an error event and cancels their requests.
  /// Safe from any thread, more than once.
  void stop();

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace duet::apps
