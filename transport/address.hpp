#pragma once

// Transport addresses: one string says which backend and where. A deployment changes one word
// to move from one machine to a cluster, e.g. fabric+shm:// -> fabric+tcp://10.0.0.5:0 ->
// fabric+efa://.
//
//   inproc://<name>                 same process; <name> is any non-empty string
//   zmq+tcp://<host>:<port>         ZeroMQ over TCP; listen with port 0 (or *) for an ephemeral one
//   zmq+ipc://<path>                ZeroMQ over a Unix socket, e.g. zmq+ipc:///tmp/duet-kv-0
//   fabric+<provider>://[<node>[:<service>]][?name=<hex>]
//                                   libfabric RDM endpoint; provider is shm, tcp (= tcp;ofi_rxm),
//                                   udp (= udp;ofi_rxd: reliable datagrams in software, slow; the
//                                   network path where no RDMA NIC exists, for tests),
//                                   verbs (= verbs;ofi_rxm) or efa. <node> pins the interface
//                                   (tcp: 127.0.0.1, a NIC's address); the listener reports its
//                                   endpoint name as ?name=<hex of fi_getname> and a sender
//                                   connects to that full string.
//
// listen() takes an address to bind; receiver::address() returns the concrete one (ephemeral
// port filled in, fabric name appended) that the control plane hands to senders.

#include "transport/error.hpp"

#include <string>
#include <string_view>

namespace duet::transport {

enum class backend_kind : std::uint8_t { inproc, zmq, fabric };

struct address {
  backend_kind backend = backend_kind::inproc;
  /// zmq: "tcp" or "ipc"; fabric: "shm", "tcp", "verbs", "efa"; inproc: empty.
  std::string flavor;
  /// Everything after "://" up to an optional '?': inproc name, zmq endpoint, fabric
  /// node[:service].
  std::string location;
  /// fabric only: the peer's raw endpoint name, hex-encoded (empty when binding).
  std::string fabric_name_hex;

  /// Parses one of the forms above; bad_address with what is wrong otherwise.
  static result<address> parse(std::string_view text);

  /// The canonical string form (parse(to_string()) gives the same address).
  std::string to_string() const;
};

} // namespace duet::transport
