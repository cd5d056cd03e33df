#include "apps/openai_protocol.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace duet::apps {

using json = nlohmann::json;

// -- errors -------------------------------------------------------------------------------------

api_error bad_request(std::string message, std::string param, std::string code) {
  return api_error{400, std::move(message), "invalid_request_error", std::move(param),
                   std::move(code)};
}

std::string dump_json(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string error_body(const api_error& error) {
  json body = {{"error",
                {{"message", error.message},
                 {"type", error.type},
                 {"param", error.param.empty() ? json(nullptr) : json(error.param)},
                 {"code", error.code.empty() ? json(nullptr) : json(error.code)}}}};
  return dump_json(body);
}

// -- requests -----------------------------------------------------------------------------------

namespace {

/// Thrown inside parse_request only, caught at its edge and returned as a value.
struct invalid : std::exception {
  explicit invalid(api_error e) : error(std::move(e)) {}
  api_error error;
};

[[noreturn]] void fail(std::string param, std::string message) {
  throw invalid{bad_request(std::move(message), std::move(param))};
}

const char* type_name(const json& v) {
  return v.type_name();
}

/// How deep a request body may nest arrays and objects. OpenAI's requests nest 4 levels
/// (messages[i].content[j].text); the bound leaves room for clients' extra fields and bounds
/// the recursion of nlohmann's serializer and copies: a 1 MiB body of 100000 nested arrays
/// inside a token-id prompt overflowed the stack of the thread that answered it (found by
/// hand, 2026-11-29; fuzz/fuzz_openai_request.cpp now covers it).
constexpr int body_depth_max = 32;

/// The deepest nesting of arrays and objects in a JSON text (strings skipped), or the first
/// depth past `limit`. Malformed text is the parser's to report: this only bounds the depth.
int nesting_depth(std::string_view text, int limit) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (depth > limit) return depth;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

/// A value for an error message: compact JSON, ASCII only (so cutting it splits no UTF-8
/// character), at most 64 characters of it.
std::string excerpt(const json& v) {
  std::string text = v.dump(-1, ' ', true, json::error_handler_t::replace);
  constexpr std::size_t max = 64;
  if (text.size() > max) text = text.substr(0, max) + "...";
  return text;
}

bool present(const json& body, const char* key) {
  auto it = body.find(key);
  return it != body.end() && !it->is_null();
}

double number_in(const json& body, const char* key, double lo, double hi, bool lo_open) {
  const json& v = body.at(key);
  if (!v.is_number()) fail(key, fmt::format("'{}' must be a number, got {}", key, type_name(v)));
  double x = v.get<double>();
  if (!std::isfinite(x) || x > hi || (lo_open ? x <= lo : x < lo))
    fail(key, fmt::format("'{}' must be in {}{}, {}], got {}", key, lo_open ? "(" : "[", lo, hi,
                          excerpt(v)));
  return x;
}

std::int64_t integer(const json& body, const char* key) {
  const json& v = body.at(key);
  if (!v.is_number_integer())
    fail(key, fmt::format("'{}' must be an integer, got {}", key,
                          v.is_number() ? excerpt(v) : std::string{type_name(v)}));
  return v.is_number_unsigned() &&
                 v.get<std::uint64_t>() >
                     static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())
             ? std::numeric_limits<std::int64_t>::max()
             : v.get<std::int64_t>();
}

std::vector<int> token_ids(const json& arr, const char* key) {
  std::vector<int> ids;
  ids.reserve(arr.size());
  for (const auto& t : arr) {
    if (!t.is_number_integer() || t.get<std::int64_t>() < 0 ||
        t.get<std::int64_t>() > std::numeric_limits<int>::max())
      fail(key,
           fmt::format("'{}' token ids must be non-negative integers, got {}", key, excerpt(t)));
    ids.push_back(t.get<int>());
  }
  return ids;
}

void parse_prompt(const json& body, openai_request& r) {
  if (!present(body, "prompt")) fail("prompt", "'prompt' is required");
  const json& p = body.at("prompt");
  if (p.is_string()) {
    r.prompt = p.get<std::string>();
    return;
  }
  if (!p.is_array())
    fail("prompt", fmt::format("'prompt' must be a string, an array of one string or an array "
                               "of token ids, got {}",
                               type_name(p)));
  if (p.empty()) fail("prompt", "'prompt' must not be an empty array");
  if (p.front().is_number()) {
    r.prompt_token_ids = token_ids(p, "prompt");
    return;
  }
  if (p.size() != 1)
    fail("prompt", fmt::format("'prompt' holds {} prompts: batched prompts are not supported, "
                               "send one prompt per request",
                               p.size()));
  if (p.front().is_string())
    r.prompt = p.front().get<std::string>();
  else if (p.front().is_array())
    r.prompt_token_ids = token_ids(p.front(), "prompt");
  else
    fail("prompt", "'prompt[0]' must be a string or an array of token ids");
}

std::string message_content(const json& m, std::size_t index, const std::string& role) {
  auto it = m.find("content");
  if (it == m.end() || it->is_null()) {
    if (role == "assistant") return {};
    fail("messages", fmt::format("'messages[{}].content' is required", index));
  }
  if (it->is_string()) return it->get<std::string>();
  if (!it->is_array())
    fail("messages", fmt::format("'messages[{}].content' must be a string or an array of text "
                                 "parts, got {}",
                                 index, type_name(*it)));
  std::string text;
  for (const auto& part : *it) {
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
        !part.at("text").is_string())
      fail("messages", fmt::format("'messages[{}].content' parts must be {{\"type\": \"text\", "
                                   "\"text\": \"...\"}} (only text is supported)",
                                   index));
    text += part.at("text").get<std::string>();
  }
  return text;
}

void parse_messages(const json& body, openai_request& r) {
  if (!present(body, "messages")) fail("messages", "'messages' is required");
  const json& ms = body.at("messages");
  if (!ms.is_array() || ms.empty())
    fail("messages", "'messages' must be a non-empty array of {role, content} objects");
  for (std::size_t i = 0; i < ms.size(); ++i) {
    const json& m = ms[i];
    if (!m.is_object()) fail("messages", fmt::format("'messages[{}]' must be an object", i));
    auto role = m.find("role");
    if (role == m.end() || !role->is_string())
      fail("messages", fmt::format("'messages[{}].role' is required (a string)", i));
    std::string name = role->get<std::string>();
    if (name != "system" && name != "developer" && name != "user" && name != "assistant" &&
        name != "tool")
      fail("messages", fmt::format("'messages[{}].role' must be system, developer, user, "
                                   "assistant or tool, got \"{}\"",
                                   i, name));
    r.messages.push_back({name, message_content(m, i, name)});
  }
}

/// The longest stop string accepted, in bytes (stop sequences are usually a few characters).
constexpr std::size_t stop_bytes_max = 1024;

void parse_stop(const json& body, openai_request& r) {
  if (!present(body, "stop")) return;
  const json& s = body.at("stop");
  if (s.is_string()) {
    r.stop.push_back(s.get<std::string>());
  } else if (s.is_array()) {
    if (s.size() > 4) fail("stop", fmt::format("'stop' holds {} strings, at most 4", s.size()));
    for (const auto& x : s) {
      if (!x.is_string()) fail("stop", "'stop' must be a string or an array of strings");
      r.stop.push_back(x.get<std::string>());
    }
  } else {
    fail("stop",
         fmt::format("'stop' must be a string or an array of strings, got {}", type_name(s)));
  }
  // The completion holds back text that may begin a stop string and compares its tail with
  // every stop string's prefixes after each token (apps/openai_text.cpp): quadratic in a stop
  // string's length, so that length is bounded.
  for (const auto& x : r.stop)
    if (x.size() > stop_bytes_max)
      fail("stop",
           fmt::format("a 'stop' string is {} bytes long, at most {}", x.size(), stop_bytes_max));
}

/// Fields OpenAI defines that duet does not implement: accepted at their neutral value only,
/// so a client relying on them learns it at once instead of getting silently different output.
void refuse_unsupported(const json& body, endpoint_kind kind) {
  auto neutral_number = [&](const char* key) {
    if (present(body, key) && !(body.at(key).is_number() && body.at(key).get<double>() == 0.0))
      fail(key, fmt::format("'{}' is not supported by duet (only 0)", key));
  };
  neutral_number("frequency_penalty");
  neutral_number("presence_penalty");
  if (present(body, "logprobs") &&
      !(body.at("logprobs").is_boolean() && !body.at("logprobs").get<bool>()))
    fail("logprobs", "'logprobs' is not supported by duet");
  if (present(body, "top_logprobs")) fail("top_logprobs", "'top_logprobs' is not supported");
  if (present(body, "logit_bias") && !body.at("logit_bias").empty())
    fail("logit_bias", "'logit_bias' is not supported by duet");
  if (kind == endpoint_kind::completions) {
    if (present(body, "echo") && body.at("echo") != false)
      fail("echo", "'echo' is not supported by duet (only false)");
    if (present(body, "suffix")) fail("suffix", "'suffix' is not supported by duet");
    if (present(body, "best_of") && body.at("best_of") != 1)
      fail("best_of", "'best_of' must be 1: duet returns one choice per request");
  } else {
    if (present(body, "tools") && !body.at("tools").empty())
      fail("tools", "'tools' (function calling) is not supported by duet");
    if (present(body, "response_format") &&
        body.at("response_format").value("type", "text") != "text")
      fail("response_format", "'response_format' other than text is not supported by duet");
  }
}

openai_request parse(endpoint_kind kind, std::string_view text) {
  if (nesting_depth(text, body_depth_max) > body_depth_max)
    throw invalid{bad_request(fmt::format(
        "request body nests arrays and objects more than {} levels deep", body_depth_max))};
  json body;
  try {
    body = json::parse(text);
  } catch (const json::parse_error& e) {
    throw invalid{bad_request(fmt::format("request body is not valid JSON: {}", e.what()))};
  }
  if (!body.is_object())
    throw invalid{
        bad_request(fmt::format("request body must be a JSON object, got {}", type_name(body)))};
  openai_request r;
  r.kind = kind;
  if (present(body, "model")) {
    if (!body.at("model").is_string()) fail("model", "'model' must be a string");
    r.model = body.at("model").get<std::string>();
  }
  if (kind == endpoint_kind::completions)
    parse_prompt(body, r);
  else
    parse_messages(body, r);

  const char* max_key = "max_tokens";
  if (kind == endpoint_kind::chat && present(body, "max_completion_tokens"))
    max_key = "max_completion_tokens";
  if (present(body, max_key)) {
    auto m = integer(body, max_key);
    if (m < 1) fail(max_key, fmt::format("'{}' must be at least 1, got {}", max_key, m));
    r.max_tokens = static_cast<int>(std::min<std::int64_t>(m, std::numeric_limits<int>::max()));
  }
  if (present(body, "temperature"))
    r.temperature = static_cast<float>(number_in(body, "temperature", 0.0, 2.0, false));
  if (present(body, "top_p"))
    r.top_p = static_cast<float>(number_in(body, "top_p", 0.0, 1.0, true));
  if (present(body, "top_k")) {
    auto k = integer(body, "top_k");
    if (k < -1) fail("top_k", "'top_k' must be -1 or 0 (off) or a positive integer");
    r.top_k = k <= 0 ? 0 : static_cast<int>(std::min<std::int64_t>(k, 1 << 20));
  }
  if (present(body, "seed")) r.seed = static_cast<std::uint64_t>(integer(body, "seed"));
  if (present(body, "n")) {
    auto n = integer(body, "n");
    if (n != 1)
      fail("n", fmt::format("'n' must be 1: duet returns one choice per request, got {}", n));
  }
  parse_stop(body, r);
  if (present(body, "stream")) {
    if (!body.at("stream").is_boolean()) fail("stream", "'stream' must be a boolean");
    r.stream = body.at("stream").get<bool>();
  }
  if (present(body, "stream_options")) {
    const json& o = body.at("stream_options");
    if (!o.is_object()) fail("stream_options", "'stream_options' must be an object");
    if (present(o, "include_usage")) {
      if (!o.at("include_usage").is_boolean())
        fail("stream_options", "'stream_options.include_usage' must be a boolean");
      r.include_usage = o.at("include_usage").get<bool>();
    }
  }
  if (present(body, "user")) {
    if (!body.at("user").is_string()) fail("user", "'user' must be a string");
    r.user = body.at("user").get<std::string>();
  }
  if (present(body, "return_token_ids")) {
    if (!body.at("return_token_ids").is_boolean())
      fail("return_token_ids", "'return_token_ids' must be a boolean");
    r.return_token_ids = body.at("return_token_ids").get<bool>();
  }
  refuse_unsupported(body, kind);
  return r;
}

} // namespace

parse_result parse_request(endpoint_kind kind, std::string_view body) {
  try {
    return parse_result{parse(kind, body), {}};
  } catch (const invalid& e) {
    return parse_result{std::nullopt, e.error};
  } catch (const json::exception& e) {
    return parse_result{std::nullopt, bad_request(fmt::format("invalid request: {}", e.what()))};
  }
}

std::string apply_chat_template(const std::vector<chat_message>& messages) {
  std::string out;
  for (const auto& m : messages)
    if (m.role == "system" || m.role == "developer") out += m.content + "\n\n";
  for (const auto& m : messages) {
    if (m.role == "user")
      out += "User: " + m.content + "\n";
    else if (m.role == "assistant")
      out += "Assistant: " + m.content + "\n";
    else if (m.role == "tool")
      out += "Tool: " + m.content + "\n";
  }
  out += "Assistant:";
  return out;
}

// -- responses ----------------------------------------------------------------------------------

json usage_json(const usage_counts& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

json completion_json(const openai_request& request, const std::string& id, std::int64_t created_s,
                     const std::string& model, const std::string& text,
                     const std::string& finish_reason, const usage_counts& usage,
                     const std::vector<int>& prompt_ids, const std::vector<int>& token_ids) {
  json choice = {{"index", 0}, {"finish_reason", finish_reason}, {"logprobs", nullptr}};
  if (request.kind == endpoint_kind::chat)
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  else
    choice["text"] = text;
  if (request.return_token_ids) choice["token_ids"] = token_ids;
  json out = {
      {"id", id},
      {"object", request.kind == endpoint_kind::chat ? "chat.completion" : "text_completion"},
      {"created", created_s},
      {"model", model},
      {"choices", json::array({choice})},
      {"usage", usage_json(usage)}};
  if (request.return_token_ids) out["prompt_token_ids"] = prompt_ids;
  return out;
}

json chunk_json(const openai_request& request, const std::string& id, std::int64_t created_s,
                const std::string& model, const std::string& text, const std::string& finish_reason,
                const std::vector<int>& token_ids, bool role_chunk,
                const std::optional<usage_counts>& usage) {
  const bool chat = request.kind == endpoint_kind::chat;
  json out = {{"id", id},
              {"object", chat ? "chat.completion.chunk" : "text_completion"},
              {"created", created_s},
              {"model", model}};
  if (usage) {
    out["choices"] = json::array();
    out["usage"] = usage_json(*usage);
    return out;
  }
  json choice = {{"index", 0},
                 {"finish_reason", finish_reason.empty() ? json(nullptr) : json(finish_reason)},
                 {"logprobs", nullptr}};
  if (chat) {
    json delta = json::object();
    if (role_chunk)
      delta = {{"role", "assistant"}, {"content", ""}};
    else if (finish_reason.empty() || !text.empty())
      delta = {{"content", text}};
    choice["delta"] = delta;
  } else {
    choice["text"] = text;
  }
  if (request.return_token_ids && !role_chunk) choice["token_ids"] = token_ids;
  out["choices"] = json::array({choice});
  if (request.include_usage) out["usage"] = nullptr;
  return out;
}

std::string sse_event(const json& payload) {
  return "data: " + dump_json(payload) + "\n\n";
}

} // namespace duet::apps
