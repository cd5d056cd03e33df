// Protocol-shape tests of the gateway over real HTTP, with a scripted test double behind it
// (fake_completion_service.hpp): JSON and SSE shapes, error statuses, admission, cancellation.
// The same behaviours against the real embedded cluster are in serve_end_to_end_test.cpp.
#include "apps/gateway.hpp"
#include "apps/log.hpp"
#include "fake_completion_service.hpp"
#include "http_test_client.hpp"
#include "prometheus_text.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <sstream>
#include <thread>

using duet::apps::gateway;
using duet::apps::gateway_options;
using duet::test::fake_completion_service;
using json = nlohmann::json;

namespace {

// A toy vocabulary: 0 <unk>, 1 BOS, 2 EOS, then words (with their leading space).
const std::vector<std::string> pieces = {"<unk>", "<s>",   "</s>",  " Once", " upon", " a",
                                         " time", " STOP", " more", ".",     "\xC3",  "\xA9"};

duet::apps::text_codec toy_codec() {
  duet::apps::text_codec codec;
  codec.encode = [](std::string_view text, bool add_bos) {
    std::vector<int> ids;
    if (add_bos) ids.push_back(1);
    std::istringstream words{std::string{text}};
    for (std::string w; words >> w;) {
      int id = 0;
      for (std::size_t i = 3; i < pieces.size(); ++i)
        if (pieces[i] == " " + w) id = static_cast<int>(i);
      ids.push_back(id);
    }
    return ids;
  };
  codec.decode = [](int, int token) {
    return token >= 0 && token < static_cast<int>(pieces.size()) ? pieces[token] : "";
  };
  codec.vocab_size = static_cast<int>(pieces.size());
  return codec;
}

struct gateway_fixture {
  explicit gateway_fixture(gateway_options options = {}) {
    options.port = 0;
    options.model_name = "toy";
    gw = std::make_unique<gateway>(options, service, toy_codec(), registry,
                                   duet::apps::make_logger("test", "warn"));
    port = gw->bind();
    thread = std::thread([this] { gw->serve(); });
  }
  ~gateway_fixture() {
    gw->stop();
    thread.join();
  }
  duet::test::prom_exposition metrics() const {
    return duet::test::parse_prometheus_text(duet::test::http_get(port, "/metrics").body);
  }

  fake_completion_service service;
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<gateway> gw;
  std::thread thread;
  int port = 0;
};

void check_error_shape(const duet::test::http_answer& a, int status) {
  INFO(a.body);
  CHECK(a.status == status);
  auto body = json::parse(a.body);
  REQUIRE(body.contains("error"));
  CHECK(body["error"]["message"].is_string());
  CHECK(!body["error"]["message"].get<std::string>().empty());
  CHECK(body["error"]["type"].is_string());
  CHECK(body["error"].contains("param"));
  CHECK(body["error"].contains("code"));
}

/// Waits (bounded) until `done()`; the condition is what synchronizes, not the time.
template <typename F>
bool eventually(F done) {
  for (int i = 0; i < 500; ++i) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return done();
}

} // namespace

TEST_CASE("A non-streaming completion returns the scripted tokens as text with usage and ids") {
  gateway_fixture f;
  f.service.script = {3, 4, 5, 6};
  auto a = duet::test::http_post(
      f.port, "/v1/completions",
      R"({"model":"toy","prompt":"Once upon","max_tokens":4,"temperature":0,"return_token_ids":true})");
  INFO(a.body);
  REQUIRE(a.status == 200);
  auto body = a.json();
  CHECK(body["object"] == "text_completion");
  CHECK(body["model"] == "toy");
  CHECK(body["choices"][0]["text"] == " Once upon a time");
  CHECK(body["choices"][0]["finish_reason"] == "length");
  CHECK(body["choices"][0]["token_ids"] == json({3, 4, 5, 6}));
  CHECK(body["prompt_token_ids"] == json({1, 3, 4}));
  CHECK(body["usage"]["prompt_tokens"] == 3);
  CHECK(body["usage"]["completion_tokens"] == 4);
  CHECK(body["usage"]["total_tokens"] == 7);
  REQUIRE(f.service.requests.size() == 1);
  CHECK(f.service.requests[0].prompt_tokens == std::vector<int>{1, 3, 4});
  CHECK(f.service.requests[0].max_tokens == 4);
  CHECK(f.service.requests[0].sampling.temperature == 0.0f);
}

TEST_CASE("A streaming completion sends OpenAI chunks and ends with data [DONE]") {
  gateway_fixture f;
  f.service.script = {3, 4, 5, 6, 9};
  f.service.end_reason = duet::actors::finish_reason::stop; // as at EOS
  auto a = duet::test::http_stream(
      f.port, "/v1/completions",
      R"({"prompt":"Once","max_tokens":10,"stream":true,"return_token_ids":true,
          "stream_options":{"include_usage":true}})");
  INFO(a.body);
  REQUIRE(a.status == 200);
  REQUIRE(a.data.size() >= 3);
  CHECK(a.data.back() == "[DONE]");
  std::string text;
  std::vector<int> ids;
  std::string finish;
  json usage;
  for (std::size_t i = 0; i + 1 < a.data.size(); ++i) {
    auto chunk = json::parse(a.data[i]);
    CHECK(chunk["object"] == "text_completion");
    CHECK(chunk["id"].get<std::string>().rfind("cmpl-", 0) == 0);
    if (chunk["choices"].empty()) {
      usage = chunk["usage"];
      continue;
    }
    text += chunk["choices"][0]["text"].get<std::string>();
    if (chunk["choices"][0].contains("token_ids"))
      for (int t : chunk["choices"][0]["token_ids"]) ids.push_back(t);
    if (!chunk["choices"][0]["finish_reason"].is_null())
      finish = chunk["choices"][0]["finish_reason"];
  }
  CHECK(text == " Once upon a time.");
  CHECK(ids == std::vector<int>{3, 4, 5, 6, 9});
  CHECK(finish == "stop");
  CHECK(usage["completion_tokens"] == 5);
  CHECK(usage["prompt_tokens"] == 2);
}

TEST_CASE(
    "A streaming chat completion starts with the assistant role and ends with finish_reason") {
  gateway_fixture f;
  f.service.script = {3, 4};
  auto a =
      duet::test::http_stream(f.port, "/v1/chat/completions",
                              R"({"model":"toy","messages":[{"role":"system","content":"Be brief."},
          {"role":"user","content":"Once"}],"max_tokens":2,"stream":true})");
  INFO(a.body);
  REQUIRE(a.status == 200);
  REQUIRE(a.data.size() >= 3);
  CHECK(a.data.back() == "[DONE]");
  auto first = json::parse(a.data.front());
  CHECK(first["object"] == "chat.completion.chunk");
  CHECK(first["choices"][0]["delta"]["role"] == "assistant");
  auto last = json::parse(a.data[a.data.size() - 2]);
  CHECK(last["choices"][0]["finish_reason"] == "length");
  std::string text;
  for (std::size_t i = 1; i + 2 < a.data.size(); ++i)
    text += json::parse(a.data[i])["choices"][0]["delta"]["content"].get<std::string>();
  CHECK(text == " Once upon");
  // The documented template: system paragraph, User/Assistant lines, then "Assistant:".
  auto expected = toy_codec().encode("Be brief.\n\nUser: Once\nAssistant:", true);
  REQUIRE(f.service.requests.size() == 1);
  CHECK(f.service.requests[0].prompt_tokens == expected);
}

TEST_CASE("A non-streaming chat completion answers with an assistant message") {
  gateway_fixture f;
  f.service.script = {5, 6};
  auto a = duet::test::http_post(f.port, "/v1/chat/completions",
                                 R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":2})");
  INFO(a.body);
  REQUIRE(a.status == 200);
  auto body = a.json();
  CHECK(body["object"] == "chat.completion");
  CHECK(body["choices"][0]["message"]["role"] == "assistant");
  CHECK(body["choices"][0]["message"]["content"] == " a time");
  CHECK(body["usage"]["completion_tokens"] == 2);
}

TEST_CASE("A stop string ends the text before it and cancels the rest of the completion") {
  gateway_fixture f;
  f.service.script = {3, 4, 7, 8, 8};
  f.service.hold_until_cancelled = true; // only a cancel ends it
  SECTION("non-streaming") {
    auto a = duet::test::http_post(f.port, "/v1/completions",
                                   R"({"prompt":"x","max_tokens":5,"stop":[" ST", "zz"]})");
    INFO(a.body);
    REQUIRE(a.status == 200);
    CHECK(a.json()["choices"][0]["text"] == " Once upon");
    CHECK(a.json()["choices"][0]["finish_reason"] == "stop");
    CHECK(a.json()["usage"]["completion_tokens"] == 3);
  }
  SECTION("streaming") {
    auto a = duet::test::http_stream(
        f.port, "/v1/completions", R"({"prompt":"x","max_tokens":5,"stop":" STOP","stream":true})");
    INFO(a.body);
    REQUIRE(a.status == 200);
    std::string text;
    std::string finish;
    for (std::size_t i = 0; i + 1 < a.data.size(); ++i) {
      auto c = json::parse(a.data[i]);
      text += c["choices"][0]["text"].get<std::string>();
      if (!c["choices"][0]["finish_reason"].is_null()) finish = c["choices"][0]["finish_reason"];
    }
    CHECK(text == " Once upon");
    CHECK(finish == "stop");
  }
  CHECK(eventually([&] { return f.service.cancelled_count() == 1; }));
  CHECK(f.metrics().value("duet_requests_total", {{"outcome", "stop"}}) == 1);
}

TEST_CASE("Text split inside a UTF-8 character is held back until the character is complete") {
  gateway_fixture f;
  f.service.script = {3, 10, 11};
  auto a = duet::test::http_stream(f.port, "/v1/completions",
                                   R"({"prompt":"x","max_tokens":3,"stream":true})");
  REQUIRE(a.status == 200);
  std::string text;
  for (std::size_t i = 0; i + 1 < a.data.size(); ++i)
    text += json::parse(a.data[i])["choices"][0]["text"].get<std::string>();
  CHECK(text == " Once\xC3\xA9");
}

TEST_CASE("Every refusal comes in OpenAI's error shape with its HTTP status") {
  gateway_options options;
  options.max_body_bytes = 4096;
  options.max_tokens = 32;
  gateway_fixture f{options};
  f.service.script = {3};
  f.service.context = 8;
  SECTION("400 for a body that is not JSON") {
    check_error_shape(duet::test::http_post(f.port, "/v1/completions", "{not json"), 400);
  }
  SECTION("400 for a missing prompt") {
    check_error_shape(duet::test::http_post(f.port, "/v1/completions", R"({"model":"toy"})"), 400);
  }
  SECTION("400 for n other than 1, naming the parameter") {
    auto a = duet::test::http_post(f.port, "/v1/completions", R"({"prompt":"x","n":2})");
    check_error_shape(a, 400);
    CHECK(a.json()["error"]["param"] == "n");
  }
  SECTION("400 for a temperature out of range") {
    auto a =
        duet::test::http_post(f.port, "/v1/chat/completions",
                              R"({"messages":[{"role":"user","content":"x"}],"temperature":3})");
    check_error_shape(a, 400);
    CHECK(a.json()["error"]["param"] == "temperature");
  }
  SECTION("400 for max_tokens above the server's cap") {
    auto a = duet::test::http_post(f.port, "/v1/completions", R"({"prompt":"x","max_tokens":33})");
    check_error_shape(a, 400);
    CHECK(a.json()["error"]["param"] == "max_tokens");
  }
  SECTION("404 for an unknown model") {
    auto a = duet::test::http_post(f.port, "/v1/completions", R"({"model":"gpt-9","prompt":"x"})");
    check_error_shape(a, 404);
    CHECK(a.json()["error"]["code"] == "model_not_found");
  }
  SECTION("404 for an unknown path") {
    check_error_shape(duet::test::http_get(f.port, "/v2/nothing"), 404);
  }
  SECTION("413 for a prompt longer than the context") {
    auto a =
        duet::test::http_post(f.port, "/v1/completions", R"({"prompt":"a a a a a a a a a a"})");
    check_error_shape(a, 413);
    CHECK(a.json()["error"]["code"] == "context_length_exceeded");
  }
  SECTION("413 for a body over --max-body-bytes") {
    std::string big = R"({"prompt":")" + std::string(8000, 'a') + R"("})";
    check_error_shape(duet::test::http_post(f.port, "/v1/completions", big), 413);
  }
  SECTION("503 when no capacity is placed") {
    f.service.is_ready = false;
    auto a = duet::test::http_post(f.port, "/v1/completions", R"({"prompt":"x"})");
    check_error_shape(a, 503);
    CHECK(!a.header("Retry-After").empty());
    check_error_shape(duet::test::http_get(f.port, "/ready"), 503);
  }
  SECTION("429 with Retry-After when the fabric is overloaded") {
    f.service.fail_with = duet::actors::service_error::overloaded;
    auto a = duet::test::http_post(f.port, "/v1/completions", R"({"prompt":"x","stream":true})");
    check_error_shape(a, 429);
    CHECK(a.header("Retry-After") == "1");
  }
  SECTION("500 when the fabric reports an internal fault") {
    f.service.fail_with = duet::actors::service_error::internal;
    check_error_shape(duet::test::http_post(f.port, "/v1/completions", R"({"prompt":"x"})"), 500);
    CHECK(f.metrics().value("duet_requests_total", {{"outcome", "internal"}}) == 1);
  }
}

TEST_CASE("API keys are required when configured") {
  gateway_options options;
  options.api_keys = {"k1", "k2"};
  gateway_fixture f{options};
  f.service.script = {3};
  const std::string body = R"({"prompt":"x","max_tokens":1})";
  check_error_shape(duet::test::http_post(f.port, "/v1/completions", body), 401);
  check_error_shape(
      duet::test::http_post(f.port, "/v1/completions", body, {{"Authorization", "Bearer k3"}}),
      401);
  check_error_shape(duet::test::http_get(f.port, "/v1/models"), 401);
  CHECK(duet::test::http_post(f.port, "/v1/completions", body, {{"Authorization", "Bearer k2"}})
            .status == 200);
  CHECK(duet::test::http_get(f.port, "/health").status == 200); // probes stay open
  CHECK(f.metrics().value("duet_requests_total", {{"outcome", "unauthorized"}}) == 2);
}

TEST_CASE("A client that disconnects mid-stream cancels its request") {
  gateway_fixture f;
  f.service.script = {3, 4, 5};
  f.service.hold_until_cancelled = true;
  auto a = duet::test::http_stream(
      f.port, "/v1/completions", R"({"prompt":"x","max_tokens":10,"stream":true})", {},
      [](const std::vector<std::string>& data) { return data.empty(); });
  CHECK(a.data.size() >= 1);
  REQUIRE(eventually([&] { return f.service.cancelled_count() == 1; }));
  CHECK(eventually([&] {
    auto m = f.metrics();
    return m.value("duet_requests_total", {{"outcome", "cancelled"}}) == 1 &&
           m.value("duet_requests_in_flight") == 0;
  }));
}

TEST_CASE("Requests beyond max_concurrent are refused with 429 and Retry-After") {
  gateway_options options;
  options.max_concurrent = 1;
  gateway_fixture f{options};
  f.service.script = {3};
  f.service.hold_until_cancelled = true;
  std::thread holder([&] {
    duet::test::http_stream(
        f.port, "/v1/completions", R"({"prompt":"x","stream":true})", {},
        [&](const std::vector<std::string>&) {
          // Keep the slot until the second request was refused.
          return f.metrics().value("duet_requests_total", {{"outcome", "overloaded"}}) != 1;
        });
  });
  REQUIRE(eventually([&] { return f.metrics().value("duet_requests_in_flight") == 1; }));
  auto a = duet::test::http_post(f.port, "/v1/completions", R"({"prompt":"x"})");
  check_error_shape(a, 429);
  CHECK(a.header("Retry-After") == "1");
  holder.join();
}

TEST_CASE("GET /v1/models lists the served model and /health answers") {
  gateway_fixture f;
  auto a = duet::test::http_get(f.port, "/v1/models");
  REQUIRE(a.status == 200);
  CHECK(a.json()["object"] == "list");
  CHECK(a.json()["data"][0]["id"] == "toy");
  CHECK(a.json()["data"][0]["max_model_len"] == 64);
  CHECK(duet::test::http_get(f.port, "/v1/models/toy").status == 200);
  CHECK(duet::test::http_get(f.port, "/v1/models/other").status == 404);
  CHECK(duet::test::http_get(f.port, "/health").json()["status"] == "ok");
  CHECK(duet::test::http_get(f.port, "/ready").json()["status"] == "ready");
}

TEST_CASE("GET /metrics is valid Prometheus text with the gateway's families") {
  gateway_fixture f;
  f.service.script = {3, 4, 5};
  REQUIRE(
      duet::test::http_post(f.port, "/v1/completions", R"({"prompt":"x","max_tokens":3})").status ==
      200);
  auto a = duet::test::http_get(f.port, "/metrics");
  REQUIRE(a.status == 200);
  INFO(a.body);
  auto m = duet::test::parse_prometheus_text(a.body);
  CHECK(m.types["duet_requests_total"] == "counter");
  CHECK(m.types["duet_requests_in_flight"] == "gauge");
  CHECK(m.types["duet_time_to_first_token_seconds"] == "histogram");
  CHECK(m.types["duet_inter_token_latency_seconds"] == "histogram");
  CHECK(m.value("duet_requests_total", {{"outcome", "length"}}) == 1);
  CHECK(m.value("duet_time_to_first_token_seconds_count") == 1);
  CHECK(m.value("duet_inter_token_latency_seconds_count") == 2);
}

TEST_CASE("The Prometheus reader used by these tests rejects malformed exposition text") {
  using duet::test::parse_prometheus_text;
  CHECK_NOTHROW(parse_prometheus_text("# TYPE a_total counter\na_total{x=\"1\"} 3\n"));
  CHECK_THROWS(parse_prometheus_text("a b c d\n"));
  CHECK_THROWS(parse_prometheus_text("a{x=1} 3\n"));
  CHECK_THROWS(parse_prometheus_text("# TYPE a counter\na -1\n"));
  CHECK_THROWS(parse_prometheus_text("a 1\nb 1\na 2\n"));
  CHECK_THROWS(parse_prometheus_text(
      "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n"));
  CHECK_THROWS(parse_prometheus_text("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\n"));
}
