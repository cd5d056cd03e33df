#pragma once

// Sampling that does not depend on where or how often a request ran: the RNG state used for
// the token at position p is a pure function of (seed, p), so a request resumed on another
// lane after a crash, or re-run after a lost KV segment, draws exactly the same tokens.
// Greedy (temperature 0) is plain argmax and needs no sampler at all.

#include "actors/completion_service.hpp"
#include "engine/sampler.hpp"

#include <cstdint>
#include <memory>
#include <span>

namespace duet::actors {

/// A sampler for `params`, or null for greedy (argmax needs no scratch).
inline std::unique_ptr<engine::sampler> make_sampler(const sampling_params& params, int vocab) {
  if (params.temperature <= 0.0f) return nullptr;
  engine::sampler_config cfg;
  cfg.temperature = params.temperature;
  cfg.top_p = params.top_p;
  cfg.top_k = params.top_k;
  cfg.seed = params.seed;
  return std::make_unique<engine::sampler>(cfg, vocab);
}

/// The token at `position` from `logits` (overwritten when sampling).
inline int sample_at(engine::sampler* sampler, std::uint64_t seed, int position,
                     std::span<float> logits) {
  if (sampler == nullptr) return engine::sample_argmax(logits);
  // splitmix64 of (seed, position): well mixed, never 0 for the xorshift generator.
  std::uint64_t z = seed + 0x9e3779b97f4a7c15ull * (static_cast<std::uint64_t>(position) + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  sampler->set_rng_state(z == 0 ? 1 : z);
  return sampler->sample(logits);
}

} // namespace duet::actors
