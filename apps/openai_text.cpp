#include "apps/openai_text.hpp"

#include <algorithm>

namespace duet::apps {

std::size_t utf8_complete_prefix(std::string_view text) {
  // Walk back over at most 3 continuation bytes to the lead byte of the last sequence.
  std::size_t n = text.size();
  std::size_t i = n;
  int continuation = 0;
  while (i > 0 && continuation < 4) {
    auto byte = static_cast<unsigned char>(text[i - 1]);
    if ((byte & 0xC0) != 0x80) break; // not a continuation byte
    --i;
    ++continuation;
  }
  if (i == 0) return continuation == 0 ? 0 : n; // only continuation bytes: nothing to wait for
  auto lead = static_cast<unsigned char>(text[i - 1]);
  int need = 0;
  if (lead < 0x80)
    need = 0;
  else if ((lead & 0xE0) == 0xC0)
    need = 1;
  else if ((lead & 0xF0) == 0xE0)
    need = 2;
  else if ((lead & 0xF8) == 0xF0)
    need = 3;
  else
    return n; // invalid lead byte: waiting will not fix it
  if (continuation >= need) return n;
  return i - 1; // the sequence starting at the lead byte is incomplete
}

completion_text::completion_text(piece_decoder decode, std::vector<int> special_ids,
                                 std::vector<std::string> stop, int prev_token)
    : decode_(std::move(decode)), special_ids_(std::move(special_ids)), prev_token_(prev_token) {
  for (auto& s : stop)
    if (!s.empty()) stop_.push_back(std::move(s));
}

std::size_t completion_text::stop_prefix_tail(std::string_view text) const {
  std::size_t tail = 0;
  for (const auto& s : stop_) {
    // Longest k < |s| such that the last k bytes of text equal the first k bytes of s.
    for (std::size_t k = std::min(s.size() - 1, text.size()); k > tail; --k) {
      if (text.substr(text.size() - k) == std::string_view{s}.substr(0, k)) {
        tail = k;
        break;
      }
    }
  }
  return tail;
}

std::string completion_text::push(int token) {
  if (stopped_) return {};
  tokens_.push_back(token);
  const bool special =
      std::find(special_ids_.begin(), special_ids_.end(), token) != special_ids_.end();
  if (!special) pending_ += decode_(prev_token_, token);
  prev_token_ = token;

  // A stop string anywhere in the pending text ends the completion right before it. Released
  // text never holds the start of a stop string (see below), so searching pending_ suffices.
  std::size_t cut = std::string::npos;
  for (const auto& s : stop_) cut = std::min(cut, pending_.find(s));
  if (cut != std::string::npos) {
    stopped_ = true;
    std::string out = pending_.substr(0, cut);
    pending_.clear();
    return out;
  }
  std::size_t release = pending_.size() - stop_prefix_tail(pending_);
  release = utf8_complete_prefix(std::string_view{pending_}.substr(0, release));
  std::string out = pending_.substr(0, release);
  pending_.erase(0, release);
  return out;
}

std::string completion_text::flush() {
  if (stopped_) return {};
  std::string out = std::move(pending_);
  pending_.clear();
  if (utf8_complete_prefix(out) != out.size()) {
    out.resize(utf8_complete_prefix(out));
    out += "\xEF\xBF\xBD"; // U+FFFD REPLACEMENT CHARACTER
  }
  return out;
}

} // namespace duet::apps
