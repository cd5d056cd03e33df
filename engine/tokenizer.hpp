#pragma once

// SentencePiece-style BPE with byte fallback, exactly as llama2.c run.c does it:
// encode = [BOS] + dummy " " prefix (non-empty text) + UTF-8 code points looked up as pieces
// (a code point with no piece falls back to its bytes, id of "<0xXX>") + repeated merging of
// the adjacent pair whose concatenation is a piece with the highest score (leftmost on ties).
// Pieces use a plain ' ' for spaces (GGUF's U+2581 must be converted by the loader).

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace duet::engine {

class tokenizer {
public:
  /// `pieces[id]` is the text of token id (bytes, spaces as ' '), `scores[id]` its merge score.
  /// Byte-fallback ids are found by their "<0xXX>" pieces; a byte without one uses id byte+3
  /// (llama2.c's layout). Throws engine_error(invalid_argument) when sizes differ, the vocab is
  /// empty, or bos/eos are out of range.
  tokenizer(std::vector<std::string> pieces, std::vector<float> scores, int bos_id, int eos_id);

  // -- encoding / decoding -------------------------------------------------------------------

  /// Token ids of `text`, with BOS first when `add_bos`. O(n log n) in the text's length (the
  /// merges go through a heap; see merge_pairs), with run.c's tokens.
  std::vector<int> encode(std::string_view text, bool add_bos) const;

  /// Text of `token` following `prev_token`, with run.c's rules: after BOS a leading space is
  /// dropped; a "<0xXX>" piece becomes that raw byte. Out-of-range ids decode to "".
  std::string decode(int prev_token, int token) const;

  /// decode() of a whole sequence (prev of the first token is `prev_token`).
  std::string decode_all(std::span<const int> tokens, int prev_token = -1) const;

  // -- properties ----------------------------------------------------------------------------

  int bos_id() const { return bos_id_; }
  int eos_id() const { return eos_id_; }
  int vocab_size() const { return static_cast<int>(pieces_.size()); }
  /// Longest piece in bytes (llama2.c's max_token_length).
  std::size_t max_piece_bytes() const { return max_piece_bytes_; }
  /// Piece text of `id` (raw, "<0x0A>" style for byte tokens). Precondition: 0 <= id < vocab.
  const std::string& piece(int id) const { return pieces_[static_cast<std::size_t>(id)]; }
  float score(int id) const { return scores_[static_cast<std::size_t>(id)]; }
  /// Id of an exact piece, or -1.
  int find_piece(std::string_view text) const;

private:
  /// encode()'s merging of adjacent pairs, in place.
  void merge_pairs(std::vector<int>& tokens) const;

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<int> sorted_ids_; ///< ids ordered by piece bytes, then id (binary search)
  int byte_ids_[256];           ///< byte-fallback id of each byte value
  int bos_id_;
  int eos_id_;
  std::size_t max_piece_bytes_ = 0;
};

/// Reads a llama2.c tokenizer file (int32 max_token_length, then per id: float32 score,
/// int32 len, len bytes). `vocab_size` < 0 reads entries until end of file; otherwise exactly
/// that many. BOS = 1, EOS = 2 (llama2.c). Throws engine_error(io_error / bad_format) naming
/// the file, the entry index and byte offset.
tokenizer load_llama2c_tokenizer(const std::string& path, int vocab_size = -1);

} // namespace duet::engine
