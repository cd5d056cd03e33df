// Fuzzes the OpenAI request parser (the body of every POST to /v1/completions and
// /v1/chat/completions) with the same bytes for both endpoints, checking that it returns a
// request or a 400, and that an accepted request satisfies the validation it promises. The
// error body is built too: it goes back to the client.
#include "apps/openai_protocol.hpp"

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace duet::apps;
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  for (endpoint_kind kind : {endpoint_kind::completions, endpoint_kind::chat}) {
    auto r = parse_request(kind, body);
    if (!r.request) {
      if (r.error.status != 400 || r.error.message.empty()) __builtin_trap();
      (void)error_body(r.error);
      continue;
    }
    const auto& q = *r.request;
    if (q.stop.size() > 4 || (q.max_tokens && *q.max_tokens < 1) || q.temperature < 0.0f ||
        q.temperature > 2.0f || q.top_p <= 0.0f || q.top_p > 1.0f || q.top_k < 0)
      __builtin_trap();
    for (const auto& stop : q.stop)
      if (stop.size() > 1024) __builtin_trap();
    if (kind == endpoint_kind::chat) {
      if (q.messages.empty()) __builtin_trap();
      (void)apply_chat_template(q.messages);
    }
    if (q.prompt_token_ids)
      for (int id : *q.prompt_token_ids)
        if (id < 0) __builtin_trap();
  }
  return 0;
}
