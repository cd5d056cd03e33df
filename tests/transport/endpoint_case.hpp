#pragma once

// A transport test's endpoint: a bind address plus how the fabric backend moves payloads.
// Every provider on this machine (shm, tcp) offers RMA, so the tagged-message path that
// providers without RMA take is forced here through options::fabric_payload = tagged; tests
// run it next to the default (automatic = RMA here) with the same expectations.

#include "transport/transport.hpp"

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

  /// transport_peer's arguments for this case: `args`, after the payload flag when tagged.
  std::vector<std::string> peer_args(std::vector<std::string> args) const {
    if (tagged) args.insert(args.begin(), "--fabric-payload=tagged");
    return args;
  }

  friend std::ostream& operator<<(std::ostream& os, const endpoint_case& c) {
    return os << c.address << (c.tagged ? " (fabric_payload = tagged)" : "");
  }
};

} // namespace duet::test
