#include "engine/model_weights.hpp"

namespace duet::engine {

std::size_t model_weights::decode_bytes_per_token() const {
  // Every matrix is streamed once per decode step (for a whole batch); norm vectors are
  // counted too (they are read every step), the embedding contributes one row.
  std::size_t bytes = rms_final.bytes() + classifier.bytes();
  if (token_embedding.rows > 0) bytes += token_embedding.bytes() / token_embedding.rows;
  for (const auto& l : layers) {
    bytes += l.rms_att.bytes() + l.wq.bytes() + l.wk.bytes() + l.wv.bytes() + l.wo.bytes() +
             l.rms_ffn.bytes() + l.w1.bytes() + l.w2.bytes() + l.w3.bytes();
  }
  return bytes;
}

} // namespace duet::engine
