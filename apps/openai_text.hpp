#pragma once

// Turns a completion's tokens into the text a client sees, one delta at a time: pieces are
// decoded with the previous token as context (SentencePiece's leading-space rule), incomplete
// UTF-8 sequences and any tail that could still become a stop string are held back, and a stop
// string ends the text before it (OpenAI: "the returned text will not contain the stop
// sequence"). Pure logic, no I/O, so the SSE and the JSON paths share it and it is unit-tested.

#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace duet::apps {

/// Decodes `token` given the token before it (-1 at the start), as engine::tokenizer::decode.
using piece_decoder = std::function<std::string(int prev_token, int token)>;

class completion_text {
public:
  /// `special_ids` decode to no text (BOS/EOS markers); `stop` are the request's stop strings
  /// (empty ones ignored).
  completion_text(piece_decoder decode, std::vector<int> special_ids, std::vector<std::string> stop,
                  int prev_token);

  /// Appends one generated token; returns the text that became safe to send (may be empty).
  /// After a stop string has matched, further tokens are ignored and return "".
  std::string push(int token);

  /// The held-back tail at the end of the stream (no stop string matched): an incomplete UTF-8
  /// sequence is completed with U+FFFD so the JSON stays valid.
  std::string flush();

  /// True once a stop string matched; the text returned so far ends right before it.
  bool stopped() const { return stopped_; }

  /// Tokens pushed until the end (the token that completed a stop string included).
  const std::vector<int>& tokens() const { return tokens_; }

private:
  /// Bytes at the end of `text` that could be the start of a stop string.
  std::size_t stop_prefix_tail(std::string_view text) const;

  piece_decoder decode_;
  std::vector<int> special_ids_;
  std::vector<std::string> stop_;
  int prev_token_;
  std::string pending_; ///< decoded, not yet released
  std::vector<int> tokens_;
  bool stopped_ = false;
};

/// Length of the longest prefix of `text` that ends on a complete UTF-8 sequence.
std::size_t utf8_complete_prefix(std::string_view text);

} // namespace duet::apps
