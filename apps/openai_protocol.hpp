#pragma once

// The OpenAI-compatible request and response shapes that `duet serve` speaks (the dialect of
// vLLM, SGLang and Dynamo): request parsing and validation with errors in OpenAI's JSON shape,
// the chat template for models without one, and the JSON of responses and SSE chunks.
// docs/serving.md is the user-facing description; keep the two in step.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace duet::apps {

// -- errors -------------------------------------------------------------------------------------

/// An error as OpenAI returns it: HTTP status + {"error": {message, type, param, code}}.
struct api_error {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param; ///< the request field at fault, "" when none (JSON null)
  std::string code;  ///< machine-readable reason, "" when none (JSON null)
};

api_error bad_request(std::string message, std::string param = {}, std::string code = {});

/// {"error": {...}} with null for empty param/code.
std::string error_body(const api_error& error);

// -- requests -----------------------------------------------------------------------------------

enum class endpoint_kind { completions, chat };

struct chat_message {
  std::string role; ///< system, developer, user, assistant or tool
  std::string content;
};

/// A validated request. Optional fields are unset when the client left them out.
struct openai_request {
  endpoint_kind kind = endpoint_kind::completions;
  std::string model;                                ///< "" when absent (means the served model)
  std::string prompt;                               ///< completions: the prompt text
  std::optional<std::vector<int>> prompt_token_ids; ///< completions: a prompt given as ids
  std::vector<chat_message> messages;               ///< chat
  std::optional<int> max_tokens; ///< max_tokens (or chat's max_completion_tokens)
  float temperature = 1.0f;      ///< OpenAI's default; 0 = greedy
  float top_p = 1.0f;
  int top_k = 0; ///< extension (vLLM): 0 = off
  std::optional<std::uint64_t> seed;
  std::vector<std::string> stop; ///< at most 4, as OpenAI
  bool stream = false;
  bool include_usage = false; ///< stream_options.include_usage
  std::string user;
  bool return_token_ids = false; ///< extension (vLLM): token_ids / prompt_token_ids in answers
};

struct parse_result {
  std::optional<openai_request> request; ///< set on success
  api_error error;                       ///< meaningful when !request
};

/// Parses and validates a request body. Never throws: every problem is a 400 whose message
/// names the field and what was wrong.
parse_result parse_request(endpoint_kind kind, std::string_view body);

/// The prompt text of a chat for a model without its own template (documented in
/// docs/serving.md): system/developer messages first as paragraphs, then one
/// "User: ...", "Assistant: ..." (or "Tool: ...") line per message, then "Assistant:".
std::string apply_chat_template(const std::vector<chat_message>& messages);

// -- responses ----------------------------------------------------------------------------------

struct usage_counts {
  int prompt_tokens = 0;
  int completion_tokens = 0;
};

nlohmann::json usage_json(const usage_counts& usage);

/// The non-streaming answer of /v1/completions or /v1/chat/completions.
nlohmann::json completion_json(const openai_request& request, const std::string& id,
                               std::int64_t created_s, const std::string& model,
                               const std::string& text, const std::string& finish_reason,
                               const usage_counts& usage, const std::vector<int>& prompt_ids,
                               const std::vector<int>& token_ids);

/// One SSE chunk. `finish_reason` "" = null (not the last chunk). `role_chunk` (chat only) is
/// the first chunk, delta {"role":"assistant","content":""}. `usage` set = the usage-only chunk
/// of stream_options.include_usage (choices empty).
nlohmann::json chunk_json(const openai_request& request, const std::string& id,
                          std::int64_t created_s, const std::string& model, const std::string& text,
                          const std::string& finish_reason, const std::vector<int>& token_ids,
                          bool role_chunk = false,
                          const std::optional<usage_counts>& usage = std::nullopt);

/// "data: <json>\n\n" (JSON with invalid UTF-8 replaced, never throws).
std::string sse_event(const nlohmann::json& payload);

/// The terminator of every stream.
inline constexpr std::string_view sse_done = "data: [DONE]\n\n";

/// JSON text with invalid UTF-8 replaced by U+FFFD (nlohmann would throw on it otherwise).
std::string dump_json(const nlohmann::json& value);

} // namespace duet::apps
