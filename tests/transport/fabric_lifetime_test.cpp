// fabric endpoints that end while a peer of the same process still talks to them, and streams
// that end while their receiver goes on. libfabric's shm provider reaches an endpoint of the
// same process through that endpoint's own memory, so a closed one must not be freed while a
// peer can still touch it (before the fix: SIGSEGV in the receiver's next credit frame, as
// duet chaos --transport fabric+shm --kill-prefill 6 found); and a receiver must free what a
// finished stream held (its window, its address-vector entry), or a long-running lane whose
// senders come and go runs out of both.
#include "tests/transport/segment_pattern.hpp"

#include <catch2/catch.hpp>

#include <thread>

using namespace duet;
using namespace duet::transport;
using namespace std::chrono_literals;

namespace {

options small_window() {
  options o;
  o.segment_bytes_max = 64 << 10;
  o.window_bytes = 256 << 10;
  return o;
}

/// Sends segment `index` of `seed` (64 KiB) and receives it on `rx`; the buffer is returned
/// still held, so its credit stays with the receiver until the caller drops it.
buffer round_trip(sender& tx, receiver& rx, std::uint64_t seed, std::uint64_t index) {
  INFO("segment " << index << " of seed " << seed);
  std::string send_error;
  std::thread sending([&] {
    if (auto r = tx.send(test::pattern_segment(seed, index, 64 << 10), 10s); !r)
      send_error = r.err().to_string();
  });
  auto seg = rx.recv(10s);
  sending.join();
  CHECK(send_error.empty());
  if (!seg) FAIL("receive: " << seg.err().to_string() << "; send: " << send_error);
  CHECK(test::matches_pattern(seg->payload.bytes(), seed, index));
  return std::move(seg->payload);
}

} // namespace

TEST_CASE("a fabric+shm receiver grants credit to a sender of its process that has closed") {
  auto rx = listen("fabric+shm://", small_window());
  REQUIRE(rx.ok());
  auto tx = connect((*rx)->address(), small_window());
  REQUIRE(tx.ok());
  buffer held = round_trip(**tx, **rx, 11, 0);
  tx->reset(); // closed: its bye is queued at the receiver, behind nothing
  // Freeing the buffer owes the closed sender a credit frame, which recv() sends before it
  // reads the bye: to an endpoint whose memory the provider reaches directly.
  held = buffer{};
  auto r = (*rx)->recv(200ms);
  CHECK(r.code() == errc::timeout);
  // The receiver goes on: a new sender of the same process streams to it.
  auto tx2 = connect((*rx)->address(), small_window());
  REQUIRE(tx2.ok());
  for (std::uint64_t i = 0; i < 8; ++i) (void)round_trip(**tx2, **rx, 12, i);
}

TEST_CASE("a fabric+shm sender whose receiver of the same process has closed gets a timeout") {
  auto rx = listen("fabric+shm://", small_window());
  REQUIRE(rx.ok());
  auto tx = connect((*rx)->address(), small_window());
  REQUIRE(tx.ok());
  std::vector<buffer> held;
  for (std::uint64_t i = 0; i < 2; ++i) held.push_back(round_trip(**tx, **rx, 13, i));
  rx->reset();
  held.clear(); // the window's buffers outlive their receiver
  // Credit for 2 more segments is still with the sender: those writes land in memory no one
  // reads; the third waits for credit that cannot come.
  errc last = errc::ok;
  for (std::uint64_t i = 2; i < 6 && last == errc::ok; ++i)
    last = (*tx)->send(test::pattern_segment(13, i, 64 << 10), 300ms).code();
  CHECK(last == errc::timeout);
  tx->reset();
}

TEST_CASE("a fabric+shm receiver frees each finished stream: 300 senders in turn") {
  // libfabric 1.17's shm address vector holds 256 peers, and every stream has its window:
  // kept until the receiver closed, senders beyond the 256th could not connect.
  auto rx = listen("fabric+shm://", small_window());
  REQUIRE(rx.ok());
  for (std::uint64_t s = 0; s < 300; ++s) {
    auto tx = connect((*rx)->address(), small_window());
    if (!tx) FAIL("sender " << s << ": " << tx.err().to_string());
    (void)round_trip(**tx, **rx, 100 + s, 0);
    // This sender's stream, and its predecessor's until its bye is read.
    CHECK((*rx)->stats().streams_open.load() <= 2);
  }
  CHECK((*rx)->recv(100ms).code() == errc::timeout); // reads the last bye
  CHECK((*rx)->stats().streams_open.load() == 0);
}

TEST_CASE("a fabric receiver holds at most streams_max streams and tells the next sender why") {
  auto o = small_window();
  o.streams_max = 2;
  auto rx = listen("fabric+shm://", o);
  REQUIRE(rx.ok());
  std::vector<std::unique_ptr<sender>> live;
  for (std::uint64_t s = 0; s < 2; ++s) {
    auto tx = connect((*rx)->address(), o);
    REQUIRE(tx.ok());
    (void)round_trip(**tx, **rx, 200 + s, 0);
    live.push_back(std::move(*tx));
  }
  auto third = connect((*rx)->address(), o);
  REQUIRE(third.ok());
  errc sent = errc::ok;
  std::string why;
  std::thread sending([&] {
    auto r = (*third)->send(test::pattern_segment(202, 0, 64 << 10), 5s);
    if (!r) {
      sent = r.code();
      why = r.err().context;
    }
  });
  auto refused = (*rx)->recv(2s); // reads the hello and refuses it
  sending.join();
  CHECK(refused.code() == errc::oversized);
  CHECK(sent == errc::oversized);
  CHECK(why.find("streams_max") != std::string::npos);
  CHECK((*rx)->stats().streams_open.load() == 2);
  // One of the two goes: a new sender gets its stream.
  live.pop_back();
  third->reset();
  auto again = connect((*rx)->address(), o);
  REQUIRE(again.ok());
  (void)round_trip(**again, **rx, 203, 0);
}
