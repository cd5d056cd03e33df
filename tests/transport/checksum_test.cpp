// The checksum every segment carries (messages::checksum_xxh3, the run-time dispatched AVX-512 /
// AVX2 xxh3) must give the value of the portable XXH3_64bits for every length and alignment,
// or a receiver on another CPU would reject every segment as corrupt.
#include "messages/kv_segment.hpp"
#include "tests/support/seed.hpp"

#include <xxhash.h>

#include <catch2/catch.hpp>

#include <cstdlib>
#include <random>
#include <vector>

using namespace duet;

namespace {

/// `n` random bytes.
std::vector<std::byte> random_bytes(std::mt19937_64& rng, std::size_t n) {
  std::vector<std::byte> bytes(n);
  for (auto& b : bytes) b = static_cast<std::byte>(rng());
  return bytes;
}

} // namespace

TEST_CASE("the segment checksum equals the portable XXH3_64bits for every length and offset") {
  const std::uint64_t seed = test::test_seed();
  INFO("seed " << seed << " (set DUET_TEST_SEED to replay)");
  std::mt19937_64 rng(seed);
  const auto bytes = random_bytes(rng, (std::size_t{1} << 20) + 64);
  // Every length up to 300 (XXH3's short-input branches: 0, 1-3, 4-8, 9-16, 17-128, 129-240,
  // long), then the stripe and block boundaries and a few random lengths, at odd offsets.
  std::vector<std::size_t> lengths;
  for (std::size_t n = 0; n <= 300; ++n) lengths.push_back(n);
  for (std::size_t n : {1023, 1024, 1025, 4096, 65535, 65536, 1 << 20}) lengths.push_back(n);
  for (int i = 0; i < 20; ++i) lengths.push_back(rng() % (std::size_t{1} << 20));
  for (std::size_t n : lengths) {
    const std::size_t offset = rng() % 64;
    std::span<const std::byte> s(bytes.data() + offset, n);
    INFO("length " << n << " offset " << offset);
    REQUIRE(messages::checksum_xxh3(s) == XXH3_64bits(s.data(), s.size()));
  }
}

TEST_CASE("the checksum over pieces equals the checksum of their concatenation") {
  const std::uint64_t seed = test::test_seed();
  INFO("seed " << seed << " (set DUET_TEST_SEED to replay)");
  std::mt19937_64 rng(seed);
  const auto bytes = random_bytes(rng, (std::size_t{3} << 20) + 17);
  messages::checksum_xxh3_stream stream;
  for (int round = 0; round < 20; ++round) {
    const std::size_t n = round == 0 ? 0 : rng() % bytes.size();
    std::span<const std::byte> all(bytes.data(), n);
    stream.reset();
    std::size_t at = 0;
    while (at < n) { // pieces of 0 to 1 MiB, as frames may be
      const std::size_t piece = std::min<std::size_t>(n - at, rng() % ((1 << 20) + 1));
      stream.update(all.subspan(at, piece));
      at += piece;
    }
    INFO("length " << n);
    CHECK(stream.digest() == messages::checksum_xxh3(all));
  }
}
