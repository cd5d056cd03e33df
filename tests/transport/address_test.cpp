// Transport addresses: one string picks backend and place.
#include "transport/transport.hpp"

#include <catch2/catch.hpp>

using namespace duet;
using namespace duet::transport;

TEST_CASE("every documented address form parses and prints back the same") {
  for (const char* text :
       {"inproc://kv", "zmq+tcp://127.0.0.1:5555", "zmq+ipc:///tmp/duet-x", "fabric+shm://",
        "fabric+tcp://127.0.0.1:0", "fabric+udp://127.0.0.1:0", "fabric+verbs://", "fabric+efa://",
        "fabric+tcp://127.0.0.1:0?name=00ff10"}) {
    auto a = address::parse(text);
    INFO(text);
    REQUIRE(a.ok());
    CHECK(a->to_string() == text);
  }
  auto efa = address::parse("fabric+efa://");
  CHECK(efa->backend == backend_kind::fabric);
  CHECK(efa->flavor == "efa");
}

TEST_CASE("malformed addresses are refused as bad_address with the reason") {
  for (const char* text : {"", "kv", "inproc://", "zmq+udp://1.2.3.4:5", "zmq+tcp://nohost",
                           "fabric+sockets://", "fabric+shm://?name=xyz", "tcp://127.0.0.1:5"}) {
    auto a = address::parse(text);
    INFO(text);
    REQUIRE_FALSE(a.ok());
    CHECK(a.code() == errc::bad_address);
    CHECK_FALSE(a.err().context.empty());
  }
}

TEST_CASE("options where the window cannot hold a largest segment are refused") {
  options o;
  o.window_bytes = 1024;
  o.segment_bytes_max = 2048;
  auto rx = listen("inproc://bad-options", o);
  REQUIRE_FALSE(rx.ok());
  CHECK_THAT(rx.err().context, Catch::Contains("window_bytes"));
}

TEST_CASE("connecting to an inproc name nobody listens on fails with bad_address") {
  auto tx = connect("inproc://nobody-here");
  REQUIRE_FALSE(tx.ok());
  CHECK(tx.code() == errc::bad_address);
}

TEST_CASE("sending to a zmq address nobody listens on fails with timeout, not a hang") {
  auto tx = connect("zmq+ipc:///tmp/duet-test-nobody-listens");
  REQUIRE(tx.ok());
  messages::kv_segment_header h;
  h.token_end = 1;
  h.n_kv_heads = 1;
  h.head_size = 128;
  auto ok = (*tx)->send(segment{h, buffer::allocate(1024)}, std::chrono::milliseconds(200));
  REQUIRE_FALSE(ok.ok());
  CHECK(ok.code() == errc::timeout);
}

TEST_CASE("fabric providers without hardware here are refused as backend_unavailable naming the "
          "provider") {
  for (const char* provider : {"verbs", "efa"}) {
    auto rx = listen(std::string("fabric+") + provider + "://");
    INFO(provider);
    if (rx.ok()) continue; // a machine with the device: nothing to check here
    CHECK(rx.code() == errc::backend_unavailable);
    CHECK_THAT(rx.err().context, Catch::Contains(provider));
  }
}
