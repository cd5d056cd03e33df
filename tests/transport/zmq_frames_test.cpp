// The zmq receiver takes a payload in any number of frames (a sender splits one over 1 MiB into
// 1 MiB frames): a hand-built DEALER sends the frames the transport would, split unevenly, and
// the receiver must hand out the same bytes, or refuse a payload whose frames add up to more
// than it allows while the stream stays usable.
#include "messages/kv_segment.hpp"
#include "messages/stream_frame.hpp"
#include "tests/transport/segment_pattern.hpp"

#include <catch2/catch.hpp>
#include <zmq.hpp>

#include <memory>
#include <vector>

using namespace duet;
using namespace duet::transport;
using namespace std::chrono_literals;

namespace {

/// A bare DEALER speaking the zmq backend's frames.
struct raw_sender {
  zmq::context_t ctx{1};
  zmq::socket_t sock{ctx, zmq::socket_type::dealer};
  std::uint64_t sequence = 0;

  explicit raw_sender(const std::string& address) {
    const std::string scheme = "zmq+tcp://";
    REQUIRE(address.rfind(scheme, 0) == 0);
    sock.set(zmq::sockopt::linger, 0);
    sock.connect("tcp://" + address.substr(scheme.size()));
    send_frame(messages::stream_hello{messages::stream_protocol_version, 42, {}}, false);
  }

  template <class Frame>
  void send_frame(const Frame& f, bool more) {
    auto bytes = messages::encode_frame(f);
    sock.send(zmq::message_t(bytes.data(), bytes.size()),
              more ? zmq::send_flags::sndmore : zmq::send_flags::none);
  }

  /// The envelope for `seg`, then its payload cut at `cuts` (offsets, ascending).
  void send_split(const segment& seg, const std::vector<std::size_t>& cuts) {
    messages::kv_envelope e;
    e.header = seg.header;
    e.header.checksum_xxh3 = messages::checksum_xxh3(seg.payload.bytes());
    e.sequence = sequence++;
    send_frame(e, true);
    std::size_t at = 0;
    for (std::size_t i = 0; i <= cuts.size(); ++i) {
      const std::size_t end = i < cuts.size() ? cuts[i] : seg.payload.size();
      sock.send(zmq::message_t(seg.payload.data() + at, end - at),
                i < cuts.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
      at = end;
    }
  }
};

/// A zmq+tcp receiver on an ephemeral port with these limits.
std::unique_ptr<receiver> listen_zmq(std::size_t segment_bytes_max, std::size_t window_bytes) {
  options opts;
  opts.segment_bytes_max = segment_bytes_max;
  opts.window_bytes = window_bytes;
  auto rx = listen("zmq+tcp://127.0.0.1:0", opts);
  REQUIRE(rx.ok());
  return std::move(*rx);
}

} // namespace

TEST_CASE("zmq: a payload split over frames of any sizes arrives byte-identical") {
  auto rx = listen_zmq(4 << 20, 16 << 20);
  raw_sender tx(rx->address());
  struct split {
    std::size_t bytes;
    std::vector<std::size_t> cuts;
  };
  // One small frame (held, not copied); a large one (copied); uneven cuts with an empty frame;
  // a cut every KiB.
  std::vector<split> splits{{4 << 10, {}},
                            {2 << 20, {}},
                            {3 << 20, {100, 100, (1 << 20) + 7, (3 << 20) - 1}},
                            {64 << 10, {}}};
  for (std::size_t k = 1; k < 64; ++k) splits.back().cuts.push_back(k << 10);
  for (std::size_t i = 0; i < splits.size(); ++i) {
    INFO("segment " << i);
    auto seg = test::pattern_segment(5, i, splits[i].bytes);
    tx.send_split(seg, splits[i].cuts);
    auto got = rx->recv(10s);
    REQUIRE(got.ok());
    CHECK(got->payload.size() == splits[i].bytes);
    CHECK(test::matches_pattern(got->payload.bytes(), 5, i));
  }
}

TEST_CASE("zmq: frames that add up to more than segment_bytes_max are refused as oversized") {
  auto rx = listen_zmq(1 << 20, 4 << 20);
  raw_sender tx(rx->address());
  // Each frame is within the limit libzmq enforces per frame; together they are not. The
  // header claims an allowed size (a header over the limit is refused with its envelope).
  auto big = test::pattern_segment(6, 0, 2 << 20);
  big.header = test::pattern_header(6, 0, 1 << 20);
  tx.send_split(big, {512 << 10, 1 << 20, (3 << 20) / 2});
  auto refused = rx->recv(10s);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.code() == errc::oversized);
  CHECK(rx->stats().rejected_for(errc::oversized) == 1);
  // The stream goes on: the next segment arrives.
  auto next = test::pattern_segment(6, 1, 64 << 10);
  tx.send_split(next, {1000});
  auto got = rx->recv(10s);
  INFO((got.ok() ? std::string() : got.err().to_string())); // in order: no sequence skipped
  REQUIRE(got.ok());
  CHECK(test::matches_pattern(got->payload.bytes(), 6, 1));
}
