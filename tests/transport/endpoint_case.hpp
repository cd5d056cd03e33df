#pragma once

// A transport test's endpoint: a bind address plus how the fabric backend moves payloads.
// Every provider on this machine (shm, tcp, udp) offers RMA, so the tagged-message path that
// providers without RMA take is forced here through options::fabric_payload = tagged; tests
// run it next to the default (automatic = RMA here) with the same expectations.

#include "transport/transport.hpp"

#include <cstddef>
#include <ostream>
#include <string>
#include <vector>

namespace duet::test {

struct endpoint_case {
  std::string address;
  bool tagged = false; ///< fabric: options::fabric_payload = tagged on both ends

  /// `base` with this case's payload mode.
  transport::options options(transport::options base = {}) const {
    if (tagged) base.fabric_payload = transport::options::fabric_payload_mode::tagged;
    return base;
  }

  /// This case's options for segments up to `segment_bytes_max` in a window of
  /// `window_bytes`: a fabric receiver faults its whole window in when a sender says hello
  /// (128 MiB by default, about a second of page faults on a loaded VM here), so tests size
  /// the window to what they send.
  transport::options sized(std::size_t segment_bytes_max, std::size_t window_bytes) const {
    transport::options o = options();
    o.segment_bytes_max = segment_bytes_max;
    o.window_bytes = window_bytes;
    return o;
  }

  /// transport_peer's arguments for this case: `args`, after the payload flag when tagged.
  std::vector<std::string> peer_args(std::vector<std::string> args) const {
    if (tagged) args.insert(args.begin(), "--fabric-payload=tagged");
    return args;
  }

  friend std::ostream& operator<<(std::ostream& os, const endpoint_case& c) {
    return os << c.address << (c.tagged ? " (fabric_payload = tagged)" : "");
  }
};

/// The fabric providers this machine runs (shm, tcp, and udp standing in for a network
/// provider without RDMA hardware), each with its RMA path (automatic, here) and once more
/// with payloads forced onto tagged messages.
inline std::vector<endpoint_case> fabric_cases() {
  std::vector<endpoint_case> cases;
  for (bool tagged : {false, true})
    for (const char* at : {"fabric+shm://", "fabric+tcp://127.0.0.1:0", "fabric+udp://127.0.0.1:0"})
      cases.push_back({at, tagged});
  return cases;
}

} // namespace duet::test
