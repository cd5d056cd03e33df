// inproc: the payload buffer itself changes hands.
#include "tests/transport/segment_pattern.hpp"

#include <catch2/catch.hpp>

using namespace duet;
using namespace duet::transport;
using namespace std::chrono_literals;

TEST_CASE("inproc hands the very same payload bytes to the receiver without copying") {
  auto rx = listen("inproc://zero-copy");
  REQUIRE(rx.ok());
  auto tx = connect("inproc://zero-copy");
  REQUIRE(tx.ok());
  for (std::size_t bytes : {std::size_t{1} << 10, std::size_t{64} << 20}) {
    auto seg = test::pattern_segment(11, 0, bytes);
    seg.header.layer = bytes == 1024 ? 0 : 1;
    const std::byte* sent_at = seg.payload.data();
    REQUIRE((*tx)->send(std::move(seg), 1s).ok());
    auto got = (*rx)->recv(1s);
    REQUIRE(got.ok());
    CHECK(got->payload.data() == sent_at);
    CHECK(got->payload.size() == bytes);
    CHECK(test::matches_pattern(got->payload.bytes(), 11, 0));
  }
}

TEST_CASE("an inproc sender to a closed receiver gets peer_dead") {
  auto rx = listen("inproc://closing");
  REQUIRE(rx.ok());
  auto tx = connect("inproc://closing");
  REQUIRE(tx.ok());
  rx->reset();
  auto ok = (*tx)->send(test::pattern_segment(1, 0, 1024), 1s);
  REQUIRE_FALSE(ok.ok());
  CHECK(ok.code() == errc::peer_dead);
}

TEST_CASE("an inproc name can be bound by one receiver at a time") {
  auto a = listen("inproc://taken");
  REQUIRE(a.ok());
  auto b = listen("inproc://taken");
  REQUIRE_FALSE(b.ok());
  CHECK(b.code() == errc::bad_address);
}
