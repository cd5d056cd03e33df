// Fabric receipts: over providers whose completion does not mean delivery (tcp;ofi_rxm
// completes a write once its bytes are in the kernel's socket buffer), a sender's flush()
// returns only once the receiver has taken every segment. The loss it prevents (a sender that
// exits right after flush() with bytes still unsent) is checked between two processes in
// two_process_test.cpp; this checks the order of events in one.
#include "tests/transport/segment_pattern.hpp"

#include <catch2/catch.hpp>

#include <thread>

using namespace duet;
using namespace duet::transport;
using namespace std::chrono_literals;

namespace {

using mode = options::fabric_payload_mode;

struct receipt_case {
  std::string address;
  mode payload;
};

std::ostream& operator<<(std::ostream& os, const receipt_case& c) {
  return os << c.address << (c.payload == mode::tagged ? " (tagged)" : " (rma)");
}

} // namespace

TEST_CASE("a fabric+tcp sender's flush() waits until the receiver has taken every segment") {
  auto c = GENERATE(receipt_case{"fabric+tcp://127.0.0.1:0", mode::rma},
                    receipt_case{"fabric+tcp://127.0.0.1:0", mode::tagged});
  INFO(c);
  options o;
  o.segment_bytes_max = 1 << 20;
  o.window_bytes = 1 << 20;
  o.fabric_payload = c.payload;
  auto rx = listen(c.address, o);
  REQUIRE(rx.ok());
  auto tx = connect((*rx)->address(), o);
  REQUIRE(tx.ok());
  // The first segment waits for the connection and the receiver's first credit, which both
  // sides' progress makes: it is sent from another thread while this one receives.
  std::thread sending([&] { CHECK((*tx)->send(test::pattern_segment(8, 0, 4 << 10), 10s).ok()); });
  auto first = (*rx)->recv(10s);
  sending.join();
  REQUIRE(first.ok());
  CHECK(test::matches_pattern(first->payload.bytes(), 8, 0));
  REQUIRE((*tx)->flush(10s).ok());

  // The next one (4 KiB: tcp;ofi_rxm completes it without the receiver's help) is sent, but
  // the receiver does not call recv(): flush() waits for its receipt, and says why when the
  // time runs out.
  REQUIRE((*tx)->send(test::pattern_segment(8, 1, 4 << 10), 10s).ok());
  auto waited = (*tx)->flush(300ms);
  REQUIRE_FALSE(waited.ok());
  CHECK(waited.code() == errc::timeout);
  CHECK_THAT(waited.err().context, Catch::Contains("had not taken 1 segment"));
  auto second = (*rx)->recv(10s);
  REQUIRE(second.ok());
  CHECK(test::matches_pattern(second->payload.bytes(), 8, 1));
  CHECK((*tx)->flush(10s).ok());
}

TEST_CASE("a rejected segment is taken too: the sender's flush() does not wait for it") {
  options o;
  o.segment_bytes_max = 1 << 20;
  o.window_bytes = 1 << 20;
  auto rx = listen("fabric+tcp://127.0.0.1:0", o);
  REQUIRE(rx.ok());
  auto tx = connect((*rx)->address(), o);
  REQUIRE(tx.ok());
  (*tx)->faults().corrupt_next = true;
  std::thread sending([&] { CHECK((*tx)->send(test::pattern_segment(9, 0, 4 << 10), 10s).ok()); });
  CHECK((*rx)->recv(10s).code() == errc::corrupt);
  sending.join();
  CHECK((*tx)->flush(10s).ok());
}
