// End-to-end tests of `duet serve`: the real binary, the real embedded cluster (stories260K,
// 1 prefill + 1 decode node), real HTTP over loopback. References come from the engine itself
// (greedy loop as `duet generate` runs it) and from the `duet generate` command's output.
#include "greedy_reference.hpp"
#include "http_test_client.hpp"
#include "prometheus_text.hpp"
#include "serve_process.hpp"
#include "streamed_completion.hpp"
#include "tests/support/models.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <map>
#include <thread>

using json = nlohmann::json;

namespace {

void check_error(const duet::test::http_answer& a, int status) {
  INFO(a.body);
  CHECK(a.status == status);
  auto body = json::parse(a.body);
  CHECK(body["error"]["message"].is_string());
  CHECK(body["error"]["type"].is_string());
  CHECK(body["error"].contains("param"));
  CHECK(body["error"].contains("code"));
}

} // namespace

TEST_CASE(
    "duet serve completions and chat return the greedy tokens of the engine and of duet generate") {
  const std::string prompt = "Once upon a time";
  const int steps = 48;
  std::vector<int> prompt_ids;
  const auto reference = duet::test::engine_greedy(prompt, steps, &prompt_ids);
  REQUIRE(reference.size() == static_cast<std::size_t>(steps)); // no early stop: unambiguous
  duet::test::serve_process serve{{}};
  const std::string body = json{
      {"model", "stories260K"},
      {"prompt", prompt},
      {"max_tokens", steps},
      {"temperature", 0},
      {"return_token_ids",
       true}}.dump();
  auto plain = duet::test::http_post(serve.port(), "/v1/completions", body);
  INFO(plain.body);
  REQUIRE(plain.status == 200);
  auto pj = plain.json();
  CHECK(pj["choices"][0]["token_ids"].get<std::vector<int>>() == reference);
  CHECK(pj["prompt_token_ids"].get<std::vector<int>>() == prompt_ids);
  CHECK(pj["choices"][0]["finish_reason"] == "length");
  CHECK(pj["usage"]["prompt_tokens"] == prompt_ids.size());
  CHECK(pj["usage"]["completion_tokens"] == steps);
  // `duet generate` echoes the prompt, then the completion, then a newline.
  CHECK(duet::test::run_generate(prompt, steps) ==
        prompt + pj["choices"][0]["text"].get<std::string>() + "\n");

  auto stream_body = json::parse(body);
  stream_body["stream"] = true;
  stream_body["stream_options"] = {{"include_usage", true}};
  auto s = duet::test::collect(
      duet::test::http_stream(serve.port(), "/v1/completions", stream_body.dump()), false);
  CHECK(s.done);
  CHECK(s.ids == reference);
  CHECK(s.text == pj["choices"][0]["text"]);
  CHECK(s.finish == "length");
  CHECK(s.completion_tokens == steps);

  // Chat: the documented template turns the messages into a prompt; same tokens as the engine
  // given that prompt.
  const auto chat_reference = duet::test::engine_greedy("User: Tell me a story.\nAssistant:", 24);
  json chat = {{"messages", {{{"role", "user"}, {"content", "Tell me a story."}}}},
               {"max_tokens", chat_reference.size()},
               {"temperature", 0},
               {"return_token_ids", true}};
  auto c = duet::test::http_post(serve.port(), "/v1/chat/completions", chat.dump());
  INFO(c.body);
  REQUIRE(c.status == 200);
  CHECK(c.json()["choices"][0]["token_ids"].get<std::vector<int>>() == chat_reference);
  chat["stream"] = true;
  auto cs = duet::test::collect(
      duet::test::http_stream(serve.port(), "/v1/chat/completions", chat.dump()), true);
  CHECK(cs.done);
  CHECK(cs.ids == chat_reference);
  CHECK(cs.text == c.json()["choices"][0]["message"]["content"]);
}

TEST_CASE("duet serve answers stop strings, seeds and the models list") {
  duet::test::serve_process serve{{"--model-name", "tiny"}};
  auto models = duet::test::http_get(serve.port(), "/v1/models");
  REQUIRE(models.status == 200);
  CHECK(models.json()["data"][0]["id"] == "tiny");
  CHECK(models.json()["data"][0]["max_model_len"] == 512);
  CHECK(duet::test::http_get(serve.port(), "/ready").status == 200);
  // The greedy story contains " Lily": stop there, without returning it.
  auto a = duet::test::http_post(serve.port(), "/v1/completions",
                                 R"({"model":"tiny","prompt":"Once upon a time","max_tokens":40,
                                     "temperature":0,"stop":[" Lily"]})");
  INFO(a.body);
  REQUIRE(a.status == 200);
  CHECK(a.json()["choices"][0]["finish_reason"] == "stop");
  CHECK(a.json()["choices"][0]["text"] == ", there was a little girl named");
  // Sampling with a seed is reproducible.
  const std::string sampled =
      R"({"prompt":"Once","max_tokens":30,"temperature":1.0,"top_p":0.9,"seed":7,"return_token_ids":true})";
  auto s1 = duet::test::http_post(serve.port(), "/v1/completions", sampled);
  auto s2 = duet::test::http_post(serve.port(), "/v1/completions", sampled);
  REQUIRE(s1.status == 200);
  CHECK(s1.json()["choices"][0]["token_ids"] == s2.json()["choices"][0]["token_ids"]);
}

TEST_CASE("duet serve returns each error status in OpenAI's error shape") {
  duet::test::serve_process serve{
      {"--api-key", "k1", "--api-key", "k2", "--max-body-bytes", "4096", "--max-tokens", "100"}};
  const int port = serve.port();
  const httplib::Headers auth = {{"Authorization", "Bearer k2"}};
  check_error(duet::test::http_post(port, "/v1/completions", R"({"prompt":"x"})"), 401);
  check_error(duet::test::http_post(port, "/v1/completions", R"({"prompt":"x"})",
                                    {{"Authorization", "Bearer nope"}}),
              401);
  check_error(duet::test::http_post(port, "/v1/completions", "{\"prompt\":", auth), 400);
  check_error(duet::test::http_post(port, "/v1/completions", R"({"prompt":"x","n":3})", auth), 400);
  check_error(
      duet::test::http_post(port, "/v1/completions", R"({"prompt":"x","max_tokens":101})", auth),
      400);
  check_error(duet::test::http_post(port, "/v1/chat/completions", R"({"messages":[]})", auth), 400);
  check_error(
      duet::test::http_post(port, "/v1/completions", R"({"model":"gpt-4","prompt":"x"})", auth),
      404);
  // 600 words > the 512-token context.
  std::string longer;
  for (int i = 0; i < 600; ++i) longer += " dog";
  check_error(duet::test::http_post(port, "/v1/completions", json{{"prompt", longer}}.dump(), auth),
              413);
  check_error(duet::test::http_post(port, "/v1/completions",
                                    json{{"prompt", std::string(5000, 'a')}}.dump(), auth),
              413);
  CHECK(duet::test::http_post(port, "/v1/completions", R"({"prompt":"x","max_tokens":2})", auth)
            .status == 200);
  auto m = duet::test::parse_prometheus_text(duet::test::http_get(port, "/metrics").body);
  CHECK(m.value("duet_requests_total", {{"outcome", "unauthorized"}}) == 2);
  CHECK(m.value("duet_requests_total", {{"outcome", "bad_request"}}) == 4);
  CHECK(m.value("duet_requests_total", {{"outcome", "not_found"}}) == 1);
  CHECK(m.value("duet_requests_total", {{"outcome", "too_large"}}) == 2);
}

TEST_CASE("A client that disconnects mid-stream cancels its request and frees its KV") {
  duet::test::serve_process serve{{}};
  const int port = serve.port();
  // A long greedy story (~340 tokens) takes far longer than the first event's round trip, so the
  // disconnect lands mid-stream; should the model ever win the race, the attempt is repeated.
  double cancelled = 0;
  for (int attempt = 0; attempt < 5 && cancelled == 0; ++attempt) {
    auto a = duet::test::http_stream(
        port, "/v1/completions",
        R"({"prompt":"Once upon a time","max_tokens":480,"temperature":0,"stream":true})", {},
        [](const std::vector<std::string>& data) { return data.empty(); });
    CHECK(!a.data.empty());         // the client read an event, then went away (no status: aborted)
    for (int i = 0; i < 500; ++i) { // bounded poll until the request is accounted for
      auto m = duet::test::parse_prometheus_text(duet::test::http_get(port, "/metrics").body);
      if (m.value("duet_requests_in_flight") == 0 && m.value("duet_kv_blocks_used") == 0) {
        cancelled = *m.value("duet_requests_total", {{"outcome", "cancelled"}});
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  CHECK(cancelled >= 1);
  auto m = duet::test::parse_prometheus_text(duet::test::http_get(port, "/metrics").body);
  CHECK(m.value("duet_kv_blocks_used") == 0);
  CHECK(m.value("duet_requests_in_flight") == 0);
  CHECK(serve.log().find("outcome=cancelled") != std::string::npos);
}

TEST_CASE("64 concurrent streaming clients all complete with no token lost or repeated") {
  const std::vector<std::string> prompts = {"Once upon a time", "The cat", "Lily and Ben",
                                            "One day"};
  const int steps = 32;
  std::vector<std::vector<int>> references;
  for (const auto& p : prompts) references.push_back(duet::test::engine_greedy(p, steps));
  duet::test::serve_process serve{{}};
  constexpr int clients = 64;
  std::vector<duet::test::streamed_completion> results(clients);
  std::vector<int> statuses(clients);
  std::vector<std::thread> threads;
  for (int i = 0; i < clients; ++i) {
    threads.emplace_back([&, i] {
      json body = {{"prompt", prompts[i % prompts.size()]},
                   {"max_tokens", steps},
                   {"temperature", 0},
                   {"stream", true},
                   {"return_token_ids", true},
                   {"stream_options", {{"include_usage", true}}}};
      auto a = duet::test::http_stream(serve.port(), "/v1/completions", body.dump());
      statuses[i] = a.status;
      results[i] = duet::test::collect(a, false);
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < clients; ++i) {
    INFO("client " << i << " status " << statuses[i]);
    CHECK(statuses[i] == 200);
    CHECK(results[i].done);
    CHECK(results[i].ids == references[i % prompts.size()]);
    CHECK(results[i].completion_tokens == static_cast<int>(results[i].ids.size()));
  }
  auto m = duet::test::parse_prometheus_text(duet::test::http_get(serve.port(), "/metrics").body);
  CHECK(m.value("duet_requests_total", {{"outcome", "length"}}).value_or(0) +
            m.value("duet_requests_total", {{"outcome", "stop"}}).value_or(0) ==
        clients);
}

TEST_CASE("duet serve's /metrics is valid Prometheus text with gateway and cluster families") {
  duet::test::serve_process serve{{}};
  REQUIRE(duet::test::http_post(serve.port(), "/v1/completions",
                                R"({"prompt":"Once","max_tokens":8,"stream":false})")
              .status == 200);
  auto a = duet::test::http_get(serve.port(), "/metrics");
  REQUIRE(a.status == 200);
  CHECK(a.header("Content-Type").rfind("text/plain; version=0.0.4", 0) == 0);
  INFO(a.body);
  auto m = duet::test::parse_prometheus_text(a.body);
  for (const char* family :
       {"duet_requests_total", "duet_requests_in_flight", "duet_time_to_first_token_seconds",
        "duet_inter_token_latency_seconds", "duet_kv_blocks_used", "duet_kv_blocks_free",
        "duet_placement_decisions_total", "duet_actor_restarts_total", "duet_queue_depth",
        "duet_kv_bytes_transferred_total", "duet_kv_transfer_seconds"})
    CHECK(m.types.count(family) == 1);
  CHECK(m.value("duet_time_to_first_token_seconds_count") == 1);
  CHECK(m.value("duet_inter_token_latency_seconds_count") == 7);
}

TEST_CASE("duet serve stops cleanly on SIGTERM") {
  duet::test::serve_process serve{{}};
  CHECK(serve.terminate() == 0);
}
