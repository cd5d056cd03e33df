// The fabric backend's payload modes (options::fabric_payload): the receiver's mode decides a
// stream, an automatic sender follows it, and a sender that cannot follow fails clearly on
// both ends instead of leaving either side waiting. (Delivery, faults and back-pressure in
// tagged mode run with every other backend in backends_test.cpp and two_process_test.cpp.)
#include "tests/transport/segment_pattern.hpp"

#include <catch2/catch.hpp>

#include <thread>

using namespace duet;
using namespace duet::transport;
using namespace std::chrono_literals;

namespace {

using mode = options::fabric_payload_mode;

/// A 1 MiB window (the receiver faults it in at hello), payloads moved as `m` says.
options with(mode m) {
  options o;
  o.segment_bytes_max = 1 << 20;
  o.window_bytes = 1 << 20;
  o.fabric_payload = m;
  return o;
}

} // namespace

TEST_CASE("an automatic fabric sender follows a receiver that takes tagged payloads") {
  auto rx = listen("fabric+shm://", with(mode::tagged));
  REQUIRE(rx.ok());
  auto tx = connect((*rx)->address(), with(mode::automatic)); // its endpoint has RMA
  REQUIRE(tx.ok());
  std::thread sending([&] {
    for (std::uint64_t i = 0; i < 3; ++i)
      CHECK((*tx)->send(test::pattern_segment(4, i, 256 << 10), 10s).ok());
    CHECK((*tx)->flush(10s).ok());
  });
  for (std::uint64_t i = 0; i < 3; ++i) {
    auto seg = (*rx)->recv(10s);
    if (!seg) {
      FAIL_CHECK(seg.err().to_string());
      break;
    }
    CHECK(test::matches_pattern(seg->payload.bytes(), 4, i));
  }
  sending.join();
}

TEST_CASE("forcing rma on a provider that offers it delivers") {
  auto rx = listen("fabric+shm://", with(mode::rma));
  REQUIRE(rx.ok());
  auto tx = connect((*rx)->address(), with(mode::rma));
  REQUIRE(tx.ok());
  std::thread sending([&] { CHECK((*tx)->send(test::pattern_segment(6, 0, 64 << 10), 10s).ok()); });
  auto seg = (*rx)->recv(10s);
  sending.join();
  REQUIRE(seg.ok());
  CHECK(test::matches_pattern(seg->payload.bytes(), 6, 0));
}

TEST_CASE("a fabric sender that cannot use the receiver's payload mode fails on both ends") {
  struct pairing {
    mode receiver, sender;
    const char* receiver_takes;
  };
  auto p = GENERATE(pairing{mode::tagged, mode::rma, "tagged messages"},
                    pairing{mode::automatic, mode::tagged, "RMA writes"});
  INFO("receiver takes " << p.receiver_takes);
  auto rx = listen("fabric+shm://", with(p.receiver));
  REQUIRE(rx.ok());
  auto tx = connect((*rx)->address(), with(p.sender));
  REQUIRE(tx.ok());
  result<void> sent;
  std::thread sending([&] { sent = (*tx)->send(test::pattern_segment(8, 0, 64 << 10), 10s); });
  // The receiver answers the hello from recv(), then hears the sender's refusal.
  auto got = (*rx)->recv(10s);
  sending.join();
  REQUIRE_FALSE(sent.ok());
  CHECK(sent.code() == errc::backend_unavailable);
  CHECK_THAT(sent.err().context, Catch::Contains(p.receiver_takes));
  REQUIRE_FALSE(got.ok());
  CHECK(got.code() == errc::backend_unavailable);
  CHECK_THAT(got.err().context, Catch::Contains("fabric_payload"));
  CHECK((*rx)->stats().segments_received == 0);
}
