#include "engine/q8_pack.hpp"

#include "engine/huge_page_memory.hpp"
#include "engine/kernels.hpp"

#include <cstring>
#include <memory>

namespace duet::engine {

std::size_t q8_packed_bytes(const tensor_view& w) {
  if (w.type != dtype::q8_0 || w.rows < q8_pack_rows || w.data == nullptr) return 0;
  const auto pairs = static_cast<std::size_t>((w.rows / q8_pack_rows + 1) / 2);
  return pairs * static_cast<std::size_t>(w.cols / 32) * q8_pack_pair_bytes;
}

void pack_q8_0(const tensor_view& w, std::uint8_t* out) {
  const std::int64_t groups = w.rows / q8_pack_rows, blocks = w.cols / 32;
  for (std::int64_t p = 0; p < (groups + 1) / 2; ++p)
    for (std::int64_t b = 0; b < blocks; ++b) {
      std::uint8_t* rec = out + static_cast<std::size_t>(p * blocks + b) * q8_pack_pair_bytes;
      for (std::int64_t h = 0; h < 2; ++h) {
        const std::int64_t g = 2 * p + h;
        for (std::int64_t i = 0; i < q8_pack_rows; ++i) {
          std::uint8_t* d = rec + 2 * (8 * h + i);
          std::uint8_t* qs = rec + 32 + 32 * h + 4 * i; // value 4k + j at qs[64 k + j]
          if (g == groups) {                            // the padding half
            std::memset(d, 0, 2);
            for (int k = 0; k < 8; ++k) std::memset(qs + 64 * k, 0x80, 4);
            continue;
          }
          const auto& blk = reinterpret_cast<const q8_0_block*>(w.row(g * q8_pack_rows + i))[b];
          std::memcpy(d, &blk.d, 2);
          for (int k = 0; k < 8; ++k)
            for (int j = 0; j < 4; ++j)
              qs[64 * k + j] =
                  static_cast<std::uint8_t>(static_cast<std::uint8_t>(blk.qs[4 * k + j]) ^ 0x80u);
        }
      }
    }
}

void pack_q8_0_weights(model_weights& m,
                       const std::function<void(const void*, std::size_t)>& packed_from) {
  if (kernels::best_simd() == kernels::simd::scalar) return;
  std::vector<tensor_view*> views;
  for (auto& l : m.layers)
    for (tensor_view* v : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w1, &l.w2, &l.w3}) views.push_back(v);
  views.push_back(&m.classifier);
  std::size_t total = 0;
  for (const tensor_view* v : views) total += q8_packed_bytes(*v);
  if (total == 0) return;
  // Huge pages: every decode step streams all of it. Measured on the Xeon VM of 2026-11-29
  // (stories110M q8_0, 1 thread, 4 KiB and huge pages alternated 3 times): all the matmuls of
  // a decode step (a scratch program) 1 token 8.2 -> 7.5 ms, 32 tokens 22.4-22.6 -> 21.3-21.4;
  // duet bench engine, single decode 101-105 -> 117-123 tok/s, 32 sequences 661-687 -> 758-783,
  // prefill 512 1076-1153 -> 1180-1226.
  auto memory = std::make_shared<huge_page_memory>(total, "the packed q8_0 weights");
  auto* buffer = reinterpret_cast<std::uint8_t*>(memory->data());
  m.packed = std::shared_ptr<const void>(memory, buffer);
  std::size_t at = 0;
  for (tensor_view* v : views) {
    const std::size_t n = q8_packed_bytes(*v);
    if (n == 0) continue;
    pack_q8_0(*v, buffer + at);
    v->q8_packed = buffer + at;
    if (packed_from)
      packed_from(v->data, static_cast<std::size_t>(v->rows / q8_pack_rows * q8_pack_rows) *
                               row_bytes(v->type, v->cols));
    at += n;
  }
}

} // namespace duet::engine
