#include "apps/gateway.hpp"

#include "apps/log.hpp"
#include "apps/metrics.hpp"
#include "apps/openai_protocol.hpp"

#include <fmt/core.h>
#include <httplib.h>

#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>

namespace duet::apps {

namespace {

using json = nlohmann::json;
using steady = std::chrono::steady_clock;

/// How often an idle stream writes an SSE comment, which is how a disconnected client is
/// noticed while no token is coming (a write to a closed connection fails).
constexpr std::chrono::milliseconds heartbeat_interval{1000};

double seconds_between(steady::time_point a, steady::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::int64_t unix_now_s() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

request_outcome outcome_for_status(int status) {
  switch (status) {
  case 400:
    return request_outcome::bad_request;
  case 401:
    return request_outcome::unauthorized;
  case 404:
    return request_outcome::not_found;
  case 413:
    return request_outcome::too_large;
  case 429:
    return request_outcome::overloaded;
  case 503:
    return request_outcome::no_capacity;
  default:
    return request_outcome::internal;
  }
}

api_error internal_error(std::string message) {
  return api_error{500, std::move(message), "server_error", "", "internal_error"};
}

api_error from_service(const actors::completion_result& r) {
  using actors::service_error;
  std::string msg = r.error_message.empty() ? "the request failed in the fabric" : r.error_message;
  switch (r.error) {
  case service_error::bad_request:
    return bad_request(msg);
  case service_error::prompt_too_long:
    return api_error{413, msg, "invalid_request_error", "messages", "context_length_exceeded"};
  case service_error::overloaded:
    return api_error{429, msg, "rate_limit_error", "", "overloaded"};
  case service_error::no_capacity:
    return api_error{503, msg, "service_unavailable_error", "", "no_capacity"};
  case service_error::none:
  case service_error::internal:
    break;
  }
  return internal_error(msg);
}

// -- one request's token queue, shared with the fabric's callbacks ---------------------------

struct token_event {
  int token;
  steady::time_point at;
};

struct request_state {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<token_event> tokens; ///< bounded by the request's max_tokens
  std::optional<actors::completion_result> done;
  int next_position = 0; ///< the position the next token must carry
  bool gap = false;      ///< a position was skipped: the fabric broke its contract
  int repeated = 0;      ///< positions delivered twice (dropped: never shown twice)
};

actors::completion_callbacks callbacks_for(const std::shared_ptr<request_state>& st) {
  actors::completion_callbacks cb;
  cb.on_token = [st](int position, int token) {
    {
      std::lock_guard lock{st->mu};
      if (position < st->next_position) {
        ++st->repeated;
        return;
      }
      if (position > st->next_position) st->gap = true;
      st->next_position = position + 1;
      st->tokens.push_back({token, steady::now()});
    }
    st->cv.notify_all();
  };
  cb.on_done = [st](const actors::completion_result& result) {
    {
      std::lock_guard lock{st->mu};
      if (!st->done) st->done = result;
    }
    st->cv.notify_all();
  };
  return cb;
}

/// What advanced since the last look: text safe to send, the tokens behind it, and the end.
struct step {
  std::string text;
  std::vector<int> token_ids;
  /// The same, one entry per token as OpenAI streams them; a token whose text is held back
  /// (stop-string prefix, partial UTF-8) joins the next entry, so no entry has empty text
  /// except possibly the last.
  std::vector<std::pair<std::string, std::vector<int>>> pieces;
  bool ended = false;
  std::string finish_reason; ///< "length" or "stop" when ended without error
  std::optional<api_error> error;
};

} // namespace

// -- the gateway --------------------------------------------------------------------------------

struct gateway::impl {
  impl(gateway_options o, actors::completion_service& s, text_codec c,
       std::shared_ptr<prometheus::Registry> r, std::shared_ptr<spdlog::logger> l)
      : options(std::move(o)), service(s), codec(std::move(c)), metrics(std::move(r)),
        log(std::move(l)), started_s(unix_now_s()) {}

  gateway_options options;
  actors::completion_service& service;
  text_codec codec;
  gateway_metrics metrics;
  std::shared_ptr<spdlog::logger> log;
  std::int64_t started_s;
  httplib::Server server;
  std::atomic<int> in_flight{0};
  std::atomic<bool> stopping{false};
  /// The listening socket, captured when httplib creates it (see listen_backlog).
  std::atomic<int> listen_fd{-1};
  std::atomic<std::uint64_t> next_id{0};
  std::uint64_t id_salt = std::random_device{}();

  struct exchange;

  void setup_routes();
  bool authorized(const httplib::Request& req) const;
  void reply_error(httplib::Response& res, const api_error& e) const;
  void handle_completion(endpoint_kind kind, const httplib::Request& req, httplib::Response& res);
  std::string new_id(endpoint_kind kind) {
    return fmt::format("{}-{:08x}{:08x}", kind == endpoint_kind::chat ? "chatcmpl" : "cmpl",
                       static_cast<std::uint32_t>(id_salt), next_id.fetch_add(1) + 1);
  }
};

/// One admitted request, from submission to its single outcome.
struct gateway::impl::exchange {
  exchange(impl& g, std::string i, openai_request r, std::vector<int> p)
      : gw(g), id(std::move(i)), req(std::move(r)), prompt(std::move(p)),
        st(std::make_shared<request_state>()),
        text(g.codec.decode, {g.codec.bos_id, g.codec.eos_id}, req.stop,
             prompt.empty() ? -1 : prompt.back()),
        admitted(steady::now()), last_event(admitted) {
    st->next_position = static_cast<int>(prompt.size());
  }

  impl& gw;
  std::string id;
  openai_request req;
  std::vector<int> prompt;
  std::shared_ptr<request_state> st;
  completion_text text;
  steady::time_point admitted;
  steady::time_point last_event;
  std::optional<steady::time_point> first_token;
  std::optional<steady::time_point> last_token;
  std::int64_t created_s = unix_now_s();
  bool role_sent = false;
  steady::time_point last_write = steady::now(); ///< of the stream, for its heartbeat
  bool finished = false; ///< outcome counted and the admission slot given back
  std::mutex finish_mu;

  /// Waits up to `wait` for tokens or the end, and turns what arrived into a step.
  step advance(std::chrono::milliseconds wait) {
    std::deque<token_event> tokens;
    std::optional<actors::completion_result> done;
    bool gap = false;
    {
      std::unique_lock lock{st->mu};
      st->cv.wait_for(lock, wait, [&] { return !st->tokens.empty() || st->done || st->gap; });
      tokens.swap(st->tokens);
      done = st->done; // on_done comes last, so every token before it is in `tokens`
      gap = st->gap;
    }
    step s;
    const auto now = steady::now();
    if (!tokens.empty() || done) last_event = now;
    for (const auto& t : tokens) {
      if (last_token)
        gw.metrics.observe_inter_token(seconds_between(*last_token, t.at));
      else {
        gw.metrics.observe_ttft(seconds_between(admitted, t.at));
        first_token = t.at;
      }
      last_token = t.at;
      std::string piece = text.push(t.token);
      s.text += piece;
      s.token_ids.push_back(t.token);
      if (s.pieces.empty() || !s.pieces.back().first.empty()) s.pieces.emplace_back();
      s.pieces.back().first += piece;
      s.pieces.back().second.push_back(t.token);
      if (text.stopped()) {
        // The rest of the completion is not wanted: free its decode slot and KV now.
        gw.service.cancel(id);
        s.ended = true;
        s.finish_reason = "stop";
        return s;
      }
    }
    if (gap) {
      gw.service.cancel(id);
      s.ended = true;
      s.error = internal_error("the fabric skipped a token position (contract violation)");
      return s;
    }
    if (done) {
      s.ended = true;
      if (done->error != actors::service_error::none ||
          done->reason == actors::finish_reason::error)
        s.error = from_service(*done);
      else if (done->reason == actors::finish_reason::cancelled)
        s.error = api_error{503, "the request was cancelled by the fabric",
                            "service_unavailable_error", "", "cancelled"};
      else {
        std::string tail = text.flush();
        s.text += tail;
        if (!tail.empty()) {
          if (s.pieces.empty()) s.pieces.emplace_back();
          s.pieces.back().first += tail;
        }
        s.finish_reason = done->reason == actors::finish_reason::stop ? "stop" : "length";
      }
      return s;
    }
    if (gw.stopping.load()) {
      gw.service.cancel(id);
      s.ended = true;
      s.error = api_error{503, "the server is shutting down", "service_unavailable_error", "",
                          "shutting_down"};
      return s;
    }
    // The fabric owns the deadline; this only guards against a fabric that never answers.
    if (now - last_event > std::chrono::milliseconds(gw.options.request_timeout_ms + 10000)) {
      gw.service.cancel(id);
      s.ended = true;
      s.error = internal_error("the fabric did not answer within the request timeout");
    }
    return s;
  }

  usage_counts usage() const {
    return {static_cast<int>(prompt.size()), static_cast<int>(text.tokens().size())};
  }

  /// Counts the outcome and gives the admission slot back, exactly once.
  void finish(request_outcome outcome, const std::string& detail = {}) {
    {
      std::lock_guard lock{finish_mu};
      if (finished) return;
      finished = true;
    }
    gw.in_flight.fetch_sub(1);
    gw.metrics.in_flight_add(-1);
    gw.metrics.count(outcome);
    auto u = usage();
    gw.metrics.add_tokens(u.prompt_tokens, u.completion_tokens);
    const double duration_s = seconds_between(admitted, steady::now());
    gw.metrics.observe_duration(duration_s);
    gw.log->info("request_id={} event=finished outcome={} prompt_tokens={} completion_tokens={} "
                 "ttft_ms={:.2f} duration_ms={:.2f}{}",
                 id, outcome_label(outcome), u.prompt_tokens, u.completion_tokens,
                 first_token ? seconds_between(admitted, *first_token) * 1000.0 : -1.0,
                 duration_s * 1000.0, detail.empty() ? "" : " detail=" + logfmt_value(detail));
  }

  bool is_finished() {
    std::lock_guard lock{finish_mu};
    return finished;
  }
};

bool gateway::impl::authorized(const httplib::Request& req) const {
  if (options.api_keys.empty()) return true;
  const std::string& header = req.get_header_value("Authorization");
  constexpr std::string_view bearer = "Bearer ";
  if (header.size() <= bearer.size() || header.compare(0, bearer.size(), bearer) != 0) return false;
  std::string_view key = std::string_view{header}.substr(bearer.size());
  bool ok = false;
  for (const auto& k : options.api_keys) {
    // Compare every byte of equal-length keys, so timing does not reveal a matching prefix.
    if (k.size() != key.size()) continue;
    unsigned diff = 0;
    for (std::size_t i = 0; i < k.size(); ++i) diff |= static_cast<unsigned>(k[i] ^ key[i]);
    ok = ok || diff == 0;
  }
  return ok;
}

void gateway::impl::reply_error(httplib::Response& res, const api_error& e) const {
  res.status = e.status;
  if (e.status == 429 || e.status == 503)
    res.set_header("Retry-After", std::to_string(options.retry_after_s));
  if (e.status == 401) res.set_header("WWW-Authenticate", "Bearer");
  res.set_content(error_body(e), "application/json");
}

void gateway::impl::handle_completion(endpoint_kind kind, const httplib::Request& hreq,
                                      httplib::Response& res) {
  const std::string id = new_id(kind);
  res.set_header("X-Request-Id", id);
  auto refuse = [&](const api_error& e) {
    reply_error(res, e);
    metrics.count(outcome_for_status(e.status));
    log->info("request_id={} event=refused status={} message={}", id, e.status,
              logfmt_value(e.message));
  };

  if (!authorized(hreq))
    return refuse(api_error{401,
                            "missing or wrong API key: send the header 'Authorization: Bearer "
                            "<key>' with a key this server was configured with",
                            "authentication_error", "", "invalid_api_key"});
  auto parsed = parse_request(kind, hreq.body);
  if (!parsed.request) return refuse(parsed.error);
  openai_request& r = *parsed.request;
  if (!r.model.empty() && r.model != options.model_name)
    return refuse(api_error{404,
                            fmt::format("the model '{}' does not exist: this server serves '{}' "
                                        "(GET /v1/models)",
                                        r.model, options.model_name),
                            "invalid_request_error", "model", "model_not_found"});

  // -- the prompt's tokens, checked against the context ----------------------------------------
  std::vector<int> prompt;
  if (r.prompt_token_ids) {
    prompt = *r.prompt_token_ids;
    for (int t : prompt)
      if (t >= codec.vocab_size)
        return refuse(bad_request(fmt::format("'prompt' token id {} is out of the vocabulary "
                                              "(size {})",
                                              t, codec.vocab_size),
                                  "prompt"));
  } else {
    const std::string text =
        kind == endpoint_kind::chat ? apply_chat_template(r.messages) : r.prompt;
    prompt = codec.encode(text, true);
  }
  const int context = service.context_length();
  const int prompt_len = static_cast<int>(prompt.size());
  const char* prompt_param = kind == endpoint_kind::chat ? "messages" : "prompt";
  if (prompt_len >= context)
    return refuse(api_error{413,
                            fmt::format("the prompt is {} tokens, the model's context is {} "
                                        "tokens (prompt + completion): shorten the prompt",
                                        prompt_len, context),
                            "invalid_request_error", prompt_param, "context_length_exceeded"});
  int max_tokens = 0;
  if (r.max_tokens) {
    if (*r.max_tokens > options.max_tokens)
      return refuse(bad_request(fmt::format("'max_tokens' is {}, this server allows at most {} "
                                            "per request",
                                            *r.max_tokens, options.max_tokens),
                                "max_tokens"));
    if (prompt_len + *r.max_tokens > context)
      return refuse(api_error{413,
                              fmt::format("the prompt is {} tokens and max_tokens is {}: more "
                                          "than the model's context of {} tokens",
                                          prompt_len, *r.max_tokens, context),
                              "invalid_request_error", "max_tokens", "context_length_exceeded"});
    max_tokens = *r.max_tokens;
  } else {
    // OpenAI's defaults: 16 for completions, "up to the context" for chat.
    const int room = std::min(context - prompt_len, options.max_tokens);
    max_tokens = kind == endpoint_kind::completions ? std::min(16, room) : room;
  }
  if (!service.ready())
    return refuse(api_error{503,
                            "no capacity placed: the cluster has no prefill and decode path "
                            "ready yet (GET /ready)",
                            "service_unavailable_error", "", "no_capacity"});

  // -- admission ---------------------------------------------------------------------------------
  if (in_flight.fetch_add(1) >= options.max_concurrent) {
    in_flight.fetch_sub(1);
    return refuse(api_error{429,
                            fmt::format("the server is at its limit of {} concurrent requests: "
                                        "retry after {} s",
                                        options.max_concurrent, options.retry_after_s),
                            "rate_limit_error", "", "overloaded"});
  }
  metrics.in_flight_add(1);
  auto ex = std::make_shared<exchange>(*this, id, std::move(r), std::move(prompt));

  actors::completion_request creq;
  creq.request_id = id;
  creq.prompt_tokens = ex->prompt;
  creq.max_tokens = max_tokens;
  creq.sampling.temperature = ex->req.temperature;
  creq.sampling.top_p = ex->req.top_p;
  creq.sampling.top_k = ex->req.top_k;
  creq.sampling.seed = ex->req.seed ? *ex->req.seed : std::random_device{}();
  creq.placement = options.placement;
  creq.deadline_ms = options.request_timeout_ms;
  log->info("request_id={} event=admitted endpoint={} stream={} prompt_tokens={} max_tokens={} "
            "temperature={} top_p={} seed={} user={}",
            id, kind == endpoint_kind::chat ? "chat" : "completions", ex->req.stream, prompt_len,
            max_tokens, ex->req.temperature, ex->req.top_p, creq.sampling.seed,
            logfmt_value(ex->req.user));
  service.submit(std::move(creq), callbacks_for(ex->st));

  // -- non-streaming: wait for the end, answer once ----------------------------------------------
  const openai_request& req = ex->req;
  if (!req.stream) {
    std::string text;
    std::vector<int> ids;
    for (;;) {
      step s = ex->advance(std::chrono::milliseconds(100));
      text += s.text;
      ids.insert(ids.end(), s.token_ids.begin(), s.token_ids.end());
      if (!s.ended) continue;
      if (s.error) {
        reply_error(res, *s.error);
        ex->finish(outcome_for_status(s.error->status), s.error->message);
      } else {
        res.set_content(dump_json(completion_json(req, id, ex->created_s, options.model_name, text,
                                                  s.finish_reason, ex->usage(), ex->prompt, ids)),
                        "application/json");
        ex->finish(s.finish_reason == "stop" ? request_outcome::stop : request_outcome::length);
      }
      return;
    }
  }

  // -- streaming: the first event decides between an error status and an event stream ---------
  step first;
  do first = ex->advance(std::chrono::milliseconds(100));
  while (!first.ended && first.token_ids.empty());
  if (first.ended && first.error && first.token_ids.empty()) {
    reply_error(res, *first.error);
    ex->finish(outcome_for_status(first.error->status), first.error->message);
    return;
  }
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, ex, pending = std::optional<step>{std::move(first)}](std::size_t,
                                                                  httplib::DataSink& sink) mutable {
        const openai_request& q = ex->req;
        std::string out;
        if (q.kind == endpoint_kind::chat && !ex->role_sent) {
          out +=
              sse_event(chunk_json(q, ex->id, ex->created_s, options.model_name, "", "", {}, true));
          ex->role_sent = true;
        }
        step s = pending ? std::move(*pending) : ex->advance(std::chrono::milliseconds(100));
        pending.reset();
        for (const auto& [piece, ids] : s.pieces)
          out +=
              sse_event(chunk_json(q, ex->id, ex->created_s, options.model_name, piece, "", ids));
        request_outcome outcome = request_outcome::length;
        if (s.ended) {
          if (s.error) {
            // OpenAI's way of failing an already started stream: an error event, then [DONE].
            out += "data: " + error_body(*s.error) + "\n\n";
            outcome = outcome_for_status(s.error->status);
          } else {
            out += sse_event(
                chunk_json(q, ex->id, ex->created_s, options.model_name, "", s.finish_reason, {}));
            if (q.include_usage)
              out += sse_event(chunk_json(q, ex->id, ex->created_s, options.model_name, "", "", {},
                                          false, ex->usage()));
            outcome = s.finish_reason == "stop" ? request_outcome::stop : request_outcome::length;
          }
          out += sse_done;
        }
        // An idle stream still writes an SSE comment now and then: only a write tells that
        // the client went away (then the releaser below cancels the request and frees its KV).
        const auto now = steady::now();
        if (out.empty() && now - ex->last_write > heartbeat_interval) out = ": keep-alive\n\n";
        // A failed write means the client went away: returning false ends the response.
        if (!out.empty()) {
          if (!sink.write(out.data(), out.size())) return false;
          ex->last_write = now;
        }
        if (s.ended) {
          ex->finish(outcome, s.error ? s.error->message : std::string{});
          sink.done();
        }
        return true;
      },
      [this, ex](bool) {
        if (ex->is_finished()) return;
        // The client disconnected mid-stream: cancel, so the fabric frees the request's KV.
        service.cancel(ex->id);
        ex->finish(request_outcome::cancelled, "client disconnected");
      });
}

void gateway::impl::setup_routes() {
  const int threads = options.max_concurrent + 8; // + health, metrics and refused requests
  server.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server.set_payload_max_length(options.max_body_bytes);
  server.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    handle_completion(endpoint_kind::completions, req, res);
  });
  server.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    handle_completion(endpoint_kind::chat, req, res);
  });
  auto model_json = [this] {
    return json{{"id", options.model_name},   {"object", "model"},
                {"created", started_s},       {"owned_by", "duet"},
                {"root", options.model_name}, {"max_model_len", service.context_length()}};
  };
  server.Get("/v1/models", [this, model_json](const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req))
      return reply_error(res, api_error{401, "missing or wrong API key", "authentication_error", "",
                                        "invalid_api_key"});
    res.set_content(dump_json(json{{"object", "list"}, {"data", json::array({model_json()})}}),
                    "application/json");
  });
  server.Get(R"(/v1/models/(.+))", [this, model_json](const httplib::Request& req,
                                                      httplib::Response& res) {
    if (!authorized(req))
      return reply_error(res, api_error{401, "missing or wrong API key", "authentication_error", "",
                                        "invalid_api_key"});
    if (req.matches[1] != options.model_name)
      return reply_error(
          res, api_error{404, fmt::format("the model '{}' does not exist", req.matches[1].str()),
                         "invalid_request_error", "model", "model_not_found"});
    res.set_content(dump_json(model_json()), "application/json");
  });
  server.Get("/health", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"status":"ok"})", "application/json");
  });
  server.Get("/ready", [this](const httplib::Request&, httplib::Response& res) {
    if (service.ready()) return res.set_content(R"({"status":"ready"})", "application/json");
    reply_error(res, api_error{503, "not ready: no prefill and decode path placed yet",
                               "service_unavailable_error", "", "no_capacity"});
  });
  server.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics.serialize(), "text/plain; version=0.0.4; charset=utf-8");
  });
  // Errors httplib produces itself (unknown path, body over the limit, bad HTTP) in OpenAI's
  // shape too; handlers' own error bodies are left as they are.
  server.set_error_handler(httplib::Server::HandlerWithResponse{[this](const httplib::Request& req,
                                                                       httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    api_error e{res.status, fmt::format("HTTP {}", res.status), "invalid_request_error", "", ""};
    if (res.status == 404) e.message = fmt::format("no route for {} {}", req.method, req.path);
    if (res.status == 413) {
      e.message = fmt::format("request body is larger than this server's limit of {} bytes",
                              options.max_body_bytes);
      e.code = "body_too_large";
      metrics.count(request_outcome::too_large);
    }
    if (res.status == 405)
      e.message = fmt::format("method {} not allowed on {}", req.method, req.path);
    res.set_content(error_body(e), "application/json");
    return httplib::Server::HandlerResponse::Handled;
  }});
  server.set_exception_handler([this](const httplib::Request& req, httplib::Response& res,
                                      std::exception_ptr ep) {
    std::string what = "unknown exception";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    log->error("request_id={} event=bug path={} message={}",
               logfmt_value(res.get_header_value("X-Request-Id")), req.path, logfmt_value(what));
    metrics.count(request_outcome::internal);
    res.status = 500;
    res.set_content(error_body(internal_error("internal error: " + what)), "application/json");
  });
}

gateway::gateway(gateway_options options, actors::completion_service& service, text_codec codec,
                 std::shared_ptr<prometheus::Registry> registry,
                 std::shared_ptr<spdlog::logger> logger)
    : impl_(std::make_unique<impl>(std::move(options), service, std::move(codec),
                                   std::move(registry), std::move(logger))) {
  impl_->setup_routes();
}

gateway::~gateway() {
  stop();
}

// Debian's cpp-httplib 0.11.4 listens with a backlog of 5: a burst of clients connecting at
// once overflows it, and the kernel drops their SYNs (each client then stalls 1 s, 3 s, 7 s...
// in retransmits). Linux lets listen() be called again on a listening socket to change the
// backlog, so we capture the socket as httplib creates it and raise the bound after binding.
// 1024 matches net.core.somaxconn's default; the kernel clamps it to that setting anyway.
constexpr int listen_backlog = 1024;

int gateway::bind() {
  const auto& o = impl_->options;
  impl_->server.set_socket_options([this](socket_t sock) {
    httplib::default_socket_options(sock); // SO_REUSEADDR, as httplib does by default
    impl_->listen_fd.store(sock);
  });
  int port = o.port == 0 ? impl_->server.bind_to_any_port(o.host)
                         : (impl_->server.bind_to_port(o.host, o.port) ? o.port : -1);
  if (port < 0)
    throw std::runtime_error(fmt::format("cannot listen on {}:{} (address in use, or not an "
                                         "address of this machine?)",
                                         o.host, o.port));
  if (int fd = impl_->listen_fd.load(); fd >= 0 && ::listen(fd, listen_backlog) != 0)
    throw std::runtime_error(fmt::format("cannot raise the listen backlog on {}:{}", o.host, port));
  return port;
}

void gateway::serve() {
  impl_->server.listen_after_bind();
}

void gateway::stop() {
  impl_->stopping.store(true);
  impl_->server.stop();
}

} // namespace duet::apps
