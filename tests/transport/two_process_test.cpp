// zmq and fabric (RMA, and payloads forced onto tagged messages) between two OS processes
// (the peer is tests/transport/peer, spawned).
#include "tests/transport/endpoint_case.hpp"
#include "tests/transport/peer_process.hpp"
#include "tests/transport/segment_pattern.hpp"

#include <catch2/catch.hpp>

#include <filesystem>
#include <random>

using namespace duet;
using namespace duet::transport;
using namespace std::chrono_literals;

namespace {

std::vector<test::endpoint_case> remote_addresses() {
  std::vector<test::endpoint_case> cases{
      {"zmq+tcp://127.0.0.1:0"}, {"zmq+ipc:///tmp/duet-test-2p-" + std::to_string(getpid())}};
  for (auto& c : test::fabric_cases()) cases.push_back(c);
  return cases;
}

/// Removes, at the end of a test, the socket file of a zmq+ipc receiver that the test kills: a
/// killed receiver cannot remove it itself.
struct killed_receiver_file {
  std::string path;
  explicit killed_receiver_file(const std::string& address) {
    const std::string ipc = "zmq+ipc://";
    if (address.rfind(ipc, 0) == 0) path = address.substr(ipc.size());
  }
  ~killed_receiver_file() {
    std::error_code ignored;
    if (!path.empty()) std::filesystem::remove(path, ignored);
  }
};

/// A receiver for the lingering-sender tests: 1 MiB segments and window, and (fabric over
/// tcp) the given silence bound.
options small_fabric(std::uint32_t silence_ms = options{}.stream_silence_ms) {
  options o;
  o.segment_bytes_max = 1 << 20;
  o.window_bytes = 1 << 20;
  o.stream_silence_ms = silence_ms;
  return o;
}

/// A `linger` or `stall` peer's first segment (pattern `seed`), checked and released, then its
/// "sent".
void receive_first(receiver& rx, test::peer_process& peer, std::uint64_t seed) {
  REQUIRE(peer.started());
  auto seg = rx.recv(30s);
  REQUIRE(seg.ok());
  CHECK(test::matches_pattern(seg->payload.bytes(), seed, 0));
  REQUIRE(peer.read_line(20s) == "sent");
}

/// The fabric providers on this machine whose receivers learn that a sender died only from its
/// silence (keepalives; verbs and efa would be too): tcp, and udp standing in for a network
/// provider without RDMA hardware.
std::vector<std::string> silence_checked_fabrics() {
  return {"fabric+tcp://127.0.0.1:0", "fabric+udp://127.0.0.1:0"};
}

/// Receives (nothing: each call times out) until the receiver holds no stream, 4 s at most.
void wait_until_no_streams(receiver& rx) {
  for (int i = 0; i < 40 && rx.stats().streams_open.load() != 0; ++i)
    CHECK(rx.recv(100ms).code() == errc::timeout);
  CHECK(rx.stats().streams_open.load() == 0);
}

/// Starts the peer in `mode` ("send" or "send-exit"), which sends one pattern segment of each
/// size (layer = its index) to rx, and checks that each arrives, in order and byte-identical,
/// and that the peer then exits 0.
void send_and_receive(const test::endpoint_case& c, receiver& rx, const std::string& mode,
                      std::uint64_t seed, const std::vector<std::size_t>& sizes) {
  std::vector<std::string> args{mode, rx.address(), std::to_string(seed)};
  for (auto s : sizes) args.push_back(std::to_string(s));
  test::peer_process peer(c.peer_args(args));
  REQUIRE(peer.started());
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    auto seg = rx.recv(30s);
    INFO("segment " << i << ": " << (seg.ok() ? "arrived" : seg.err().to_string()));
    REQUIRE(seg.ok());
    CHECK(seg->header.layer == i);
    REQUIRE(seg->payload.size() == sizes[i]);
    CHECK(test::matches_pattern(seg->payload.bytes(), seed, i));
  }
  CHECK(peer.wait(30s) == 0);
}

} // namespace

TEST_CASE("segments of 1 KiB to 64 MiB cross to another process byte-identical") {
  auto c = GENERATE(from_range(remote_addresses()));
  INFO(c);
  // A window of one largest segment: the ring wraps, and the receiver faults in 64 MiB, not
  // the default 128.
  auto rx = listen(c.address, c.sized(64 << 20, 64 << 20));
  REQUIRE(rx.ok());
  const std::uint64_t seed = std::random_device{}() % 100000;
  INFO("seed " << seed);
  const std::vector<std::size_t> sizes{1 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20};
  send_and_receive(c, **rx, "send", seed, sizes);
}

TEST_CASE("a sender that exits the moment flush() returns has delivered every segment") {
  // flush() waits until every segment is handed over for good (zmq: libzmq has written its
  // frames to the socket; fabric: the write and its envelope are done, and but on shm the
  // receiver has sent its receipt). The peer _exits right after it, with no goodbye, no
  // destructor and no grace period, and every segment still arrives. Three rounds, each a new
  // receiver and a new sender process. This fails if flush() returns with a segment's write or
  // envelope still needing the sender. It rarely caught the race it was written after (an
  // injected envelope lost on udp while its write completed): loopback seldom drops a
  // datagram, and the build before the fix passed it 8 times out of 8. Before receipts it
  // failed over fabric+tcp in 7 of 30 runs beside two busy loops (the 1 MiB segment lost: a
  // connection reset at exit drops what the socket had not sent); with them, in 0 of 60.
  auto c = GENERATE(from_range(remote_addresses()));
  INFO(c);
  const std::vector<std::size_t> sizes{1 << 10, 64 << 10, 1 << 20, 4 << 10, 256 << 10};
  for (int round = 0; round < 3; ++round) {
    auto rx = listen(c.address, c.sized(1 << 20, 4 << 20));
    REQUIRE(rx.ok());
    const std::uint64_t seed = 1000 + static_cast<std::uint64_t>(round);
    INFO("round " << round);
    send_and_receive(c, **rx, "send-exit", seed, sizes);
  }
}

TEST_CASE("a sender killed mid-stream leaves the receiver with a timeout, not a hang") {
  auto c = GENERATE(from_range(remote_addresses()));
  INFO(c);
  auto rx = listen(c.address, c.sized(1 << 20, 1 << 20));
  REQUIRE(rx.ok());
  test::peer_process peer(c.peer_args({"send", (*rx)->address(), "1", "1024"}));
  REQUIRE(peer.started());
  auto first = (*rx)->recv(30s);
  REQUIRE(first.ok());
  peer.kill();
  auto next = (*rx)->recv(300ms);
  REQUIRE_FALSE(next.ok());
  CHECK((next.code() == errc::timeout || next.code() == errc::peer_dead));
}

TEST_CASE("a receiver killed while holding credit leaves the sender with a timeout") {
  auto c = GENERATE(from_range(remote_addresses()));
  INFO(c);
  const killed_receiver_file leftover(c.address);
  test::peer_process peer(c.peer_args({"hold", c.address, "1"}));
  REQUIRE(peer.started());
  auto at = peer.read_line(20s);
  REQUIRE_FALSE(at.empty());
  auto tx = connect(at, c.options());
  REQUIRE(tx.ok());
  // The peer's window is 1 MiB: this segment fills it, the peer keeps it.
  REQUIRE((*tx)->send(test::pattern_segment(2, 0, 1 << 20), 10s).ok());
  REQUIRE((*tx)->flush(10s).ok());
  peer.kill();
  auto ok = (*tx)->send(test::pattern_segment(2, 1, 1 << 20), 300ms);
  REQUIRE_FALSE(ok.ok());
  CHECK((ok.code() == errc::timeout || ok.code() == errc::peer_dead));
}

TEST_CASE("a fabric+shm receiver frees the stream of a sender whose process died without a "
          "goodbye") {
  // Its window would otherwise stay until the receiver closes: one per node process that dies
  // and rejoins.
  auto rx = listen("fabric+shm://", small_fabric());
  REQUIRE(rx.ok());
  test::peer_process peer({"linger", (*rx)->address(), "5", "65536"});
  receive_first(**rx, peer, 5);
  CHECK((*rx)->stats().streams_open.load() == 1);
  (void)(*rx)->recv(700ms); // the sender lives: its stream stays
  CHECK((*rx)->stats().streams_open.load() == 1);
  peer.kill();
  wait_until_no_streams(**rx); // its pid is checked at most every 500 ms
}

TEST_CASE("a fabric receiver over tcp or udp keeps an idle live sender's stream and ends a "
          "silent dead one's") {
  // Over tcp and udp (and verbs, efa) nothing tells the receiver that the sender's process is
  // gone: a live sender says so every quarter of stream_silence_ms while idle; a dead one
  // falls silent and its stream, with its window, is freed.
  const std::string at = GENERATE(from_range(silence_checked_fabrics()));
  INFO(at);
  auto rx = listen(at, small_fabric(1000));
  REQUIRE(rx.ok());
  test::peer_process peer({"linger", (*rx)->address(), "6", "65536"});
  receive_first(**rx, peer, 6);
  // Three silence bounds of idleness: its keepalives hold the stream.
  for (int i = 0; i < 30; ++i) CHECK((*rx)->recv(100ms).code() == errc::timeout);
  CHECK((*rx)->stats().streams_open.load() == 1);
  peer.kill();
  wait_until_no_streams(**rx);
}

TEST_CASE("a fabric sender over tcp or udp stalled past the silence bound fails its next send "
          "cleanly") {
  // Its stream was ended as dead and its window's registration closed: the write it makes on
  // waking must fail at the sender, and nothing of it may arrive. Its first segment is released
  // (receive_first), so the window's memory goes with the stream: a late write must not land
  // in it.
  const std::string at = GENERATE(from_range(silence_checked_fabrics()));
  INFO(at);
  auto rx = listen(at, small_fabric(1000));
  REQUIRE(rx.ok());
  test::peer_process peer({"stall", (*rx)->address(), "7", "65536"});
  receive_first(**rx, peer, 7);
  peer.signal(SIGSTOP);
  wait_until_no_streams(**rx);
  peer.signal(SIGCONT);
  // The peer's second send, into the closed window: it fails there, and the receiver takes
  // nothing from it.
  for (int i = 0; i < 60; ++i) {
    auto got = (*rx)->recv(100ms);
    CHECK_FALSE(got.ok());
  }
  auto second = peer.read_line(20s);
  INFO(second);
  CHECK(second.rfind("second: ", 0) == 0);
  CHECK(second != "second: ok");
  CHECK(peer.wait(10s) == 0);
}
