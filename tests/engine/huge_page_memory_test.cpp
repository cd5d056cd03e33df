// The anonymous memory behind the packed q8_0 weights and the KV pool: usable as asked, and a
// size the system cannot give is a clear error, not a crash.
#include "engine/error.hpp"
#include "engine/huge_page_memory.hpp"

#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>
#include <string>
#include <utility>

using namespace duet::engine;

TEST_CASE("huge_page_memory starts on a 2 MiB boundary and holds at least the bytes asked",
          "[engine][memory]") {
  const std::size_t two_mib = std::size_t{2} << 20;
  const std::size_t asked = 3 * two_mib + 12345;
  huge_page_memory m(asked, "a test buffer");
  REQUIRE(m.data() != nullptr);
  CHECK(reinterpret_cast<std::uintptr_t>(m.data()) % two_mib == 0);
  CHECK(m.size() >= asked);
  CHECK(m.size() % two_mib == 0);
  for (std::size_t i = 0; i < m.size(); i += 4096) m.data()[i] = std::byte(i / 4096);
  m.data()[m.size() - 1] = std::byte{0x5a};
  huge_page_memory moved = std::move(m);
  CHECK(m.data() == nullptr);
  CHECK(m.size() == 0);
  CHECK(moved.data()[3 * 4096] == std::byte{3});
  CHECK(moved.data()[moved.size() - 1] == std::byte{0x5a});
}

TEST_CASE("a size the system cannot reserve is out_of_capacity, naming what it was for",
          "[engine][memory]") {
  auto expect_refusal = [](std::size_t bytes, const std::string& reason) {
    try {
      huge_page_memory m(bytes, "the test pool", "ask for less");
      FAIL("reserved " << bytes << " bytes");
    } catch (const engine_error& e) {
      const std::string what = e.what();
      INFO(what);
      CHECK(e.code() == engine_errc::out_of_capacity);
      CHECK(what.find("cannot reserve " + std::to_string(bytes) + " bytes for the test pool") !=
            std::string::npos);
      CHECK(what.find(reason) != std::string::npos);
      CHECK(what.find("ask for less") != std::string::npos);
    }
  };
  // 1 EiB: beyond any process's address space (user space is 47 or 56 bits), whatever the
  // overcommit policy.
  expect_refusal(std::size_t{1} << 60, "(");
  expect_refusal(std::numeric_limits<std::size_t>::max(), "the size overflows");
}
