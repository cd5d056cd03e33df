// completion_text: incremental decoding with stop strings and UTF-8 hold-back, and request
// parsing edge cases.
#include "apps/openai_protocol.hpp"
#include "apps/openai_text.hpp"

#include <catch2/catch.hpp>

using namespace duet::apps;

namespace {
const std::vector<std::string> pieces = {"",     "<s>", "</s>",     "Hel",  "lo",
                                         " wor", "ld",  "\xE2\x82", "\xAC", "!"};
piece_decoder decoder() {
  return [](int, int t) { return pieces[static_cast<std::size_t>(t)]; };
}
} // namespace

TEST_CASE("A stop string spanning several tokens is cut and never partly sent") {
  completion_text text{decoder(), {1, 2}, {"lo wo"}, 1};
  CHECK(text.push(3) == "He"); // the "l" might start "lo wo": held back
  CHECK(text.push(4) == "l");  // "llo": the second "lo" might start it
  CHECK(text.push(5) == "");   // "lo wor" contains "lo wo": stop, nothing of it sent
  CHECK(text.stopped());
  CHECK(text.push(6) == ""); // ignored after the stop
  CHECK(text.tokens() == std::vector<int>{3, 4, 5});
  CHECK(text.flush() == "");
}

TEST_CASE("Held-back text is released when it stops looking like a stop string") {
  completion_text text{decoder(), {1, 2}, {"lox"}, 1};
  CHECK(text.push(3) == "He");
  CHECK(text.push(4) == "l");
  CHECK(text.push(5) == "lo wor"); // "lo w" is not "lox": released
  CHECK(!text.stopped());
  CHECK(text.flush() == "");
}

TEST_CASE("A UTF-8 character split over tokens is sent whole, and special tokens send nothing") {
  completion_text text{decoder(), {1, 2}, {}, 1};
  CHECK(text.push(7) == "");
  CHECK(text.push(8) == "\xE2\x82\xAC");
  CHECK(text.push(2) == "");
  CHECK(text.push(7) == "");
  CHECK(text.flush() == "\xEF\xBF\xBD"); // an unfinished character ends as U+FFFD
  CHECK(utf8_complete_prefix("ab\xE2\x82") == 2);
  CHECK(utf8_complete_prefix("ab\xE2\x82\xAC") == 5);
}

TEST_CASE("Requests accept OpenAI's prompt and stop forms and refuse the unsupported clearly") {
  auto ok = parse_request(endpoint_kind::completions, R"({"prompt":["hi"],"stop":"x","seed":3})");
  REQUIRE(ok.request);
  CHECK(ok.request->prompt == "hi");
  CHECK(ok.request->stop == std::vector<std::string>{"x"});
  CHECK(ok.request->seed == 3u);
  auto ids = parse_request(endpoint_kind::completions, R"({"prompt":[1,5,9]})");
  REQUIRE(ids.request);
  CHECK(*ids.request->prompt_token_ids == std::vector<int>{1, 5, 9});
  auto refused = [](std::string_view body, const std::string& param) {
    auto r = parse_request(endpoint_kind::completions, body);
    INFO(body);
    REQUIRE(!r.request);
    CHECK(r.error.status == 400);
    CHECK(r.error.param == param);
  };
  refused(R"({"prompt":["a","b"]})", "prompt");
  refused(R"({"prompt":"a","stop":["1","2","3","4","5"]})", "stop");
  refused(R"({"prompt":"a","stop":[")" + std::string(1025, 'x') + R"("]})", "stop");
  refused(R"({"prompt":"a","stop":")" + std::string(1025, 'x') + R"("})", "stop");
  CHECK(parse_request(endpoint_kind::completions,
                      R"({"prompt":"a","stop":[")" + std::string(1024, 'x') + R"("]})")
            .request);
  refused(R"({"prompt":"a","max_tokens":0})", "max_tokens");
  refused(R"({"prompt":"a","top_p":0})", "top_p");
  refused(R"({"prompt":"a","logprobs":3})", "logprobs");
  refused(R"({"prompt":"a","echo":true})", "echo");
  refused(R"({"prompt":"a","stream":"yes"})", "stream");
  // Deep nesting is refused before parsing (it overflowed the stack when an error message
  // printed the value); brackets inside strings, escaped quotes included, do not count.
  const std::string deep(100000, '[');
  refused(R"({"prompt":[1,)" + deep + std::string(100000, ']') + "]}", "");
  refused(R"({"prompt":"a","user":)" + std::string(33, '[') + std::string(33, ']') + "}", "");
  auto nested_ok =
      parse_request(endpoint_kind::completions, R"({"prompt":"a\"[[[)" + std::string(100, '[') +
                                                    R"(","metadata":)" + std::string(30, '[') +
                                                    std::string(30, ']') + "}");
  INFO(nested_ok.error.message);
  REQUIRE(nested_ok.request);
  CHECK(nested_ok.request->prompt == "a\"[[[" + std::string(100, '['));
  auto deep_error =
      parse_request(endpoint_kind::completions,
                    R"({"prompt":[1,)" + deep.substr(0, 40) + std::string(40, ']') + "]}");
  CHECK(deep_error.error.message.find("levels deep") != std::string::npos);
  // A bad value is quoted in the error, shortened.
  auto long_value = parse_request(endpoint_kind::completions,
                                  R"({"prompt":[1,")" + std::string(5000, 'x') + R"("]})");
  REQUIRE(!long_value.request);
  CHECK(long_value.error.message.size() < 200);
  auto chat =
      parse_request(endpoint_kind::chat, R"({"messages":[{"role":"wizard","content":"x"}]})");
  REQUIRE(!chat.request);
  CHECK(chat.error.param == "messages");
  CHECK(error_body(chat.error).find(R"("code":null)") != std::string::npos);
}
