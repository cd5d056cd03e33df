// transport_peer: the other OS process of the two-process transport tests.
//   transport_peer send <address> <seed> <bytes>...   connect, send one pattern segment per
//                                                     size (layer = its index), flush, exit 0
//   transport_peer send-exit <address> <seed> <bytes>...  the same, then _exit(0) at once
//                                                     after flush: no goodbye, no destructor,
//                                                     no grace period
//   transport_peer linger <address> <seed> <bytes>    send one pattern segment, flush, print
//                                                     "sent", then wait to be killed (no
//                                                     goodbye: a crashed sender)
//   transport_peer stall <address> <seed> <bytes>     send segment 0, print "sent", sleep 3 s
//                                                     (the test stops the process meanwhile),
//                                                     send segment 1, print "second: ok" or
//                                                     "second: <error>", exit 0
//   transport_peer hold <bind-address> <count>        listen, print the concrete address on
//                                                     stdout, receive <count> segments and keep
//                                                     them (never release credit), then wait to
//                                                     be killed
//   --fabric-payload=tagged (before the mode)       fabric: move payloads as tagged messages
//                                                     (options::fabric_payload), as the test
//                                                     side does
// Exit codes: 0 ok, 2 usage, 3 transport error (printed on stderr).
#include "tests/transport/segment_pattern.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

using namespace duet;
using namespace std::chrono_literals;

int main(int argc, char** argv) {
  transport::options base;
  if (argc > 1 && std::string(argv[1]) == "--fabric-payload=tagged") {
    base.fabric_payload = transport::options::fabric_payload_mode::tagged;
    ++argv;
    --argc;
  }
  if (argc < 4) return 2;
  std::string mode = argv[1];
  if (mode == "send" || mode == "send-exit") {
    std::uint64_t seed = std::strtoull(argv[3], nullptr, 10);
    auto tx = transport::connect(argv[2], base);
    if (!tx) {
      std::fprintf(stderr, "connect: %s\n", tx.err().to_string().c_str());
      return 3;
    }
    for (int i = 4; i < argc; ++i) {
      std::size_t bytes = std::strtoull(argv[i], nullptr, 10);
      auto ok =
          (*tx)->send(test::pattern_segment(seed, static_cast<std::uint64_t>(i - 4), bytes), 20s);
      if (!ok) {
        std::fprintf(stderr, "send %zu: %s\n", bytes, ok.err().to_string().c_str());
        return 3;
      }
    }
    if (auto ok = (*tx)->flush(20s); !ok) {
      std::fprintf(stderr, "flush: %s\n", ok.err().to_string().c_str());
      return 3;
    }
    if (mode == "send-exit") std::_Exit(0);
    // Give the receiver time to take the last bytes before the socket closes.
    std::this_thread::sleep_for(300ms);
    return 0;
  }
  if (mode == "linger" || mode == "stall") {
    if (argc < 5) return 2;
    auto tx = transport::connect(argv[2], base);
    if (!tx) {
      std::fprintf(stderr, "connect: %s\n", tx.err().to_string().c_str());
      return 3;
    }
    const std::uint64_t seed = std::strtoull(argv[3], nullptr, 10);
    const std::size_t bytes = std::strtoull(argv[4], nullptr, 10);
    auto ok = (*tx)->send(test::pattern_segment(seed, 0, bytes), 20s);
    if (ok) ok = (*tx)->flush(20s);
    if (!ok) {
      std::fprintf(stderr, "send: %s\n", ok.err().to_string().c_str());
      return 3;
    }
    std::printf("sent\n");
    std::fflush(stdout);
    if (mode == "linger")
      for (;;) std::this_thread::sleep_for(1s); // until killed
    std::this_thread::sleep_for(3s);
    ok = (*tx)->send(test::pattern_segment(seed, 1, bytes), 5s);
    if (ok) ok = (*tx)->flush(5s);
    std::printf("second: %s\n", ok ? "ok" : ok.err().to_string().c_str());
    std::fflush(stdout);
    return 0;
  }
  if (mode == "hold") {
    transport::options opts = base;
    opts.window_bytes = 1 << 20;
    opts.segment_bytes_max = 1 << 20;
    auto rx = transport::listen(argv[2], opts);
    if (!rx) {
      std::fprintf(stderr, "listen: %s\n", rx.err().to_string().c_str());
      return 3;
    }
    std::printf("%s\n", (*rx)->address().c_str());
    std::fflush(stdout);
    int count = std::atoi(argv[3]);
    std::vector<transport::segment> held;
    while (static_cast<int>(held.size()) < count) {
      auto s = (*rx)->recv(20s);
      if (!s) {
        std::fprintf(stderr, "recv: %s\n", s.err().to_string().c_str());
        return 3;
      }
      held.push_back(std::move(*s));
    }
    for (;;) std::this_thread::sleep_for(1s); // until killed
  }
  return 2;
}
