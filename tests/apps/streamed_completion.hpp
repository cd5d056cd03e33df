#pragma once

// A streamed (SSE) completion as a client reassembles it: text, token ids, finish reason,
// usage and whether `data: [DONE]` came. Shared by the serve end-to-end tests.

#include "http_test_client.hpp"

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace duet::test {

struct streamed_completion {
  std::string text;
  std::vector<int> ids;
  std::string finish;
  int completion_tokens = -1; ///< from the usage chunk, -1 if none came
  bool done = false;          ///< `data: [DONE]` arrived
};

/// Reassembles the chunks of /v1/completions (`chat` false) or /v1/chat/completions.
inline streamed_completion collect(const sse_answer& a, bool chat) {
  using json = nlohmann::json;
  streamed_completion s;
  for (const auto& d : a.data) {
    if (d == "[DONE]") {
      s.done = true;
      continue;
    }
    auto c = json::parse(d);
    if (c.contains("usage") && c["usage"].is_object())
      s.completion_tokens = c["usage"]["completion_tokens"];
    if (c["choices"].empty()) continue;
    const auto& ch = c["choices"][0];
    if (chat) {
      if (ch["delta"].contains("content")) s.text += ch["delta"]["content"].get<std::string>();
    } else {
      s.text += ch["text"].get<std::string>();
    }
    if (ch.contains("token_ids"))
      for (int t : ch["token_ids"]) s.ids.push_back(t);
    if (!ch["finish_reason"].is_null()) s.finish = ch["finish_reason"];
  }
  return s;
}

} // namespace duet::test
