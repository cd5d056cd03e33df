#pragma once

// The seed of a randomized test: DUET_TEST_SEED replays a failure (every such test prints the
// seed it used in its INFO).

#include <cstdint>
#include <cstdlib>
#include <random>

namespace duet::test {

/// DUET_TEST_SEED when set, else `otherwise`.
inline std::uint64_t test_seed_or(std::uint64_t otherwise) {
  if (const char* env = std::getenv("DUET_TEST_SEED"); env != nullptr && *env != '\0')
    return std::strtoull(env, nullptr, 10);
  return otherwise;
}

/// DUET_TEST_SEED when set, else one random seed for the whole test process.
inline std::uint64_t test_seed() {
  static const std::uint64_t seed = test_seed_or(std::random_device{}());
  return seed;
}

} // namespace duet::test
