#pragma once

// Deterministic KV-shaped segments for transport tests and the two-process peer: the bytes of
// segment k under a seed are a pure function, so each side can regenerate and compare.

#include "transport/transport.hpp"

#include <cstdint>
#include <cstring>

namespace duet::test {

inline std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/// A header whose shape needs exactly `bytes` (a multiple of 1 KiB): f32, 1 head of 128, so
/// 1 KiB per token (K and V).
inline messages::kv_segment_header pattern_header(std::uint64_t request, std::uint32_t layer,
                                                  std::size_t bytes) {
  messages::kv_segment_header h;
  h.request_id = request;
  h.epoch = 1;
  h.layer = layer;
  h.token_begin = 0;
  h.token_end = static_cast<std::uint32_t>(bytes / 1024);
  h.dtype = messages::kv_dtype::f32;
  h.n_kv_heads = 1;
  h.head_size = 128;
  h.payload_bytes = bytes;
  return h;
}

inline void fill_pattern(std::span<std::byte> out, std::uint64_t seed, std::uint64_t index) {
  std::uint64_t base = splitmix64(seed * 1000003 + index);
  std::size_t words = out.size() / 8;
  auto* p = out.data();
  for (std::size_t i = 0; i < words; ++i) {
    std::uint64_t v = base + i * 0x9e3779b97f4a7c15ull;
    v ^= v >> 29;
    std::memcpy(p + i * 8, &v, 8);
  }
  for (std::size_t i = words * 8; i < out.size(); ++i) p[i] = std::byte(i);
}

inline transport::segment pattern_segment(std::uint64_t seed, std::uint64_t index,
                                          std::size_t bytes) {
  transport::segment s{pattern_header(seed, static_cast<std::uint32_t>(index), bytes),
                       transport::buffer::allocate(bytes)};
  fill_pattern(s.payload.mutable_bytes(), seed, index);
  return s;
}

inline bool matches_pattern(std::span<const std::byte> got, std::uint64_t seed,
                            std::uint64_t index) {
  auto want = transport::buffer::allocate(got.size());
  fill_pattern(want.mutable_bytes(), seed, index);
  return got.size() == 0 || std::memcmp(got.data(), want.data(), got.size()) == 0;
}

} // namespace duet::test
