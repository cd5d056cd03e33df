// BPE tokenizer after llama2.c run.c (encode/decode), with a binary-searched piece index.
#include "engine/tokenizer.hpp"

#include "engine/error.hpp"
#include "engine/mapped_file.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace duet::engine {

namespace {

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/// The byte of a "<0xHH>" piece, or -1.
int byte_piece_value(std::string_view p) {
  if (p.size() != 6 || p.substr(0, 3) != "<0x" || p[5] != '>') return -1;
  int hi = hex_digit(p[3]), lo = hex_digit(p[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

} // namespace

tokenizer::tokenizer(std::vector<std::string> pieces, std::vector<float> scores, int bos_id,
                     int eos_id)
    : pieces_(std::move(pieces)), scores_(std::move(scores)), bos_id_(bos_id), eos_id_(eos_id) {
  if (pieces_.empty())
    throw engine_error(engine_errc::invalid_argument, "tokenizer: empty vocabulary");
  if (pieces_.size() != scores_.size())
    throw engine_error(engine_errc::invalid_argument,
                       "tokenizer: " + std::to_string(pieces_.size()) + " pieces but " +
                           std::to_string(scores_.size()) + " scores");
  auto n = static_cast<int>(pieces_.size());
  if (bos_id < 0 || bos_id >= n || eos_id < 0 || eos_id >= n)
    throw engine_error(engine_errc::invalid_argument,
                       "tokenizer: bos id " + std::to_string(bos_id) + " / eos id " +
                           std::to_string(eos_id) + " outside the vocabulary of " +
                           std::to_string(n));
  sorted_ids_.resize(pieces_.size());
  for (int i = 0; i < n; ++i) sorted_ids_[static_cast<std::size_t>(i)] = i;
  std::stable_sort(sorted_ids_.begin(), sorted_ids_.end(),
                   [this](int a, int b) { return piece(a) < piece(b); });
  for (auto& id : byte_ids_) id = -1;
  for (int i = 0; i < n; ++i) {
    max_piece_bytes_ = std::max(max_piece_bytes_, piece(i).size());
    int b = byte_piece_value(piece(i));
    if (b >= 0 && byte_ids_[b] < 0) byte_ids_[b] = i;
  }
  for (int b = 0; b < 256; ++b) // llama2.c's fixed layout when the vocab has no such piece
    if (byte_ids_[b] < 0) byte_ids_[b] = b + 3 < n ? b + 3 : 0;
}

int tokenizer::find_piece(std::string_view text) const {
  auto it = std::lower_bound(sorted_ids_.begin(), sorted_ids_.end(), text,
                             [this](int id, std::string_view t) { return piece(id) < t; });
  if (it == sorted_ids_.end() || piece(*it) != text) return -1;
  return *it;
}

std::vector<int> tokenizer::encode(std::string_view text, bool add_bos) const {
  std::vector<int> tokens;
  tokens.reserve(text.size() + 2);
  if (add_bos) tokens.push_back(bos_id_);
  // SentencePiece's add_dummy_prefix, as run.c: a " " token before any non-empty text.
  if (!text.empty()) {
    int space = find_piece(" ");
    tokens.push_back(space >= 0 ? space : byte_ids_[static_cast<unsigned char>(' ')]);
  }
  // UTF-8 code points (at most 4 bytes; run.c's loop, including its handling of stray
  // continuation bytes), each a piece or, failing that, its bytes.
  std::string buf;
  for (std::size_t i = 0; i < text.size(); ++i) {
    auto c = static_cast<unsigned char>(text[i]);
    if ((c & 0xC0) != 0x80) buf.clear();
    buf.push_back(static_cast<char>(c));
    auto next = i + 1 < text.size() ? static_cast<unsigned char>(text[i + 1]) : 0;
    if ((next & 0xC0) == 0x80 && buf.size() < 4) continue;
    int id = find_piece(buf);
    if (id >= 0) {
      tokens.push_back(id);
    } else {
      for (char b : buf) tokens.push_back(byte_ids_[static_cast<unsigned char>(b)]);
    }
    buf.clear();
  }
  merge_pairs(tokens);
  return tokens;
}

// run.c merges by rescanning every adjacent pair for each merge: O(n^2) lookups, which took
// 5.3 s for a 16 KB prompt and 97 s for 64 KB (stories260K's tok512), so a 1 MiB request body
// held a gateway thread for hours. Here, as SentencePiece and llama.cpp do it: the symbols form
// a linked list and every adjacent pair that is a piece waits in a max-heap ordered by score,
// then by position (leftmost first). A popped pair whose symbols have changed since it was
// pushed is stale and skipped. Each merge is the one run.c's scan would pick (the best score,
// the leftmost on ties, and only scores above its starting -1e10), so the tokens are the same:
// tests/engine/tokenizer_test.cpp checks them against a transcription of run.c.
void tokenizer::merge_pairs(std::vector<int>& tokens) const {
  const int n = static_cast<int>(tokens.size());
  if (n < 2) return;
  struct symbol {
    int id, prev, next; ///< id -1: merged into its left neighbour
  };
  std::vector<symbol> sym(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i)
    sym[static_cast<std::size_t>(i)] = {tokens[static_cast<std::size_t>(i)], i - 1,
                                        i + 1 < n ? i + 1 : -1};
  struct pair {
    float score;
    int left, right, left_id, right_id, merged;
  };
  auto worse = [](const pair& a, const pair& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::vector<pair> heap;
  std::string buf;
  auto consider = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const int a = sym[static_cast<std::size_t>(left)].id,
              b = sym[static_cast<std::size_t>(right)].id;
    buf.assign(piece(a));
    buf.append(piece(b));
    const int id = find_piece(buf);
    if (id < 0 || !(score(id) > -1e10f)) return;
    heap.push_back({score(id), left, right, a, b, id});
    std::push_heap(heap.begin(), heap.end(), worse);
  };
  for (int i = 0; i + 1 < n; ++i) consider(i, i + 1);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), worse);
    const pair p = heap.back();
    heap.pop_back();
    symbol& l = sym[static_cast<std::size_t>(p.left)];
    symbol& r = sym[static_cast<std::size_t>(p.right)];
    if (l.id != p.left_id || l.next != p.right || r.id != p.right_id) continue; // stale
    l.id = p.merged;
    l.next = r.next;
    if (r.next >= 0) sym[static_cast<std::size_t>(r.next)].prev = p.left;
    r.id = -1;
    consider(l.prev, p.left);
    consider(p.left, l.next);
  }
  tokens.clear();
  for (int i = 0; i >= 0; i = sym[static_cast<std::size_t>(i)].next)
    tokens.push_back(sym[static_cast<std::size_t>(i)].id);
}

std::string tokenizer::decode(int prev_token, int token) const {
  if (token < 0 || token >= vocab_size()) return {};
  std::string_view p = piece(token);
  if (prev_token == bos_id_ && !p.empty() && p[0] == ' ') p.remove_prefix(1);
  if (int b = byte_piece_value(p); b >= 0) return std::string(1, static_cast<char>(b));
  return std::string(p);
}

std::string tokenizer::decode_all(std::span<const int> tokens, int prev_token) const {
  std::string out;
  for (int t : tokens) {
    out += decode(prev_token, t);
    prev_token = t;
  }
  return out;
}

tokenizer load_llama2c_tokenizer(const std::string& path, int vocab_size) {
  auto file = mapped_file::open(path);
  const auto* p = file->data();
  std::size_t size = file->size(), off = 0;
  auto bad = [&](const std::string& msg) {
    throw engine_error(engine_errc::bad_format, path + ": " + msg);
  };
  auto read_i32 = [&](const char* what, std::size_t entry) {
    if (off + 4 > size)
      bad(std::string{"truncated: "} + what + " of entry " + std::to_string(entry) + " at offset " +
          std::to_string(off) + " needs 4 bytes, file has " + std::to_string(size));
    std::int32_t v;
    std::memcpy(&v, p + off, 4);
    off += 4;
    return v;
  };
  if (size < 4)
    bad("truncated header: expected 4 bytes (max_token_length), file has " + std::to_string(size));
  std::int32_t max_len = read_i32("max_token_length", 0);
  if (max_len <= 0 || max_len > 65536)
    bad("max_token_length is " + std::to_string(max_len) + ", expected 1..65536");
  std::vector<std::string> pieces;
  std::vector<float> scores;
  for (std::size_t i = 0; vocab_size < 0 ? off < size : i < static_cast<std::size_t>(vocab_size);
       ++i) {
    std::int32_t score_bits = read_i32("score", i);
    float score;
    std::memcpy(&score, &score_bits, 4);
    std::size_t at = off;
    std::int32_t len = read_i32("length", i);
    if (len < 0 || len > max_len)
      bad("entry " + std::to_string(i) + " at offset " + std::to_string(at) + " has length " +
          std::to_string(len) + ", expected 0.." + std::to_string(max_len));
    if (off + static_cast<std::size_t>(len) > size)
      bad("truncated: entry " + std::to_string(i) + " at offset " + std::to_string(off) +
          " needs " + std::to_string(len) + " bytes, file has " + std::to_string(size - off));
    pieces.emplace_back(reinterpret_cast<const char*>(p + off), static_cast<std::size_t>(len));
    scores.push_back(score);
    off += static_cast<std::size_t>(len);
  }
  if (pieces.size() < 3)
    bad("only " + std::to_string(pieces.size()) + " entries, expected at least 3 (unk, bos, eos)");
  return tokenizer(std::move(pieces), std::move(scores), 1, 2);
}

} // namespace duet::engine
