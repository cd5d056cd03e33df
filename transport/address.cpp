#include "transport/address.hpp"

#include <cctype>

namespace duet::transport {

namespace {

error bad(std::string_view text, std::string_view why) {
  return fail(errc::bad_address, "'" + std::string(text) + "': " + std::string(why));
}

bool is_hex(std::string_view s) {
  for (char c : s)
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
  return s.size() % 2 == 0;
}

} // namespace

result<address> address::parse(std::string_view text) {
  auto sep = text.find("://");
  if (sep == std::string_view::npos)
    return bad(text, "expected <scheme>://..., e.g. inproc://kv, zmq+tcp://127.0.0.1:0, "
                     "fabric+shm://");
  std::string_view scheme = text.substr(0, sep);
  std::string_view rest = text.substr(sep + 3);
  address a;
  if (scheme == "inproc") {
    if (rest.empty()) return bad(text, "inproc needs a name");
    a.backend = backend_kind::inproc;
    a.location = std::string(rest);
    return a;
  }
  auto plus = scheme.find('+');
  if (plus == std::string_view::npos)
    return bad(text, "unknown scheme '" + std::string(scheme) +
                         "' (inproc, zmq+tcp, zmq+ipc, fabric+shm|tcp|udp|verbs|efa)");
  std::string_view family = scheme.substr(0, plus);
  a.flavor = std::string(scheme.substr(plus + 1));
  if (family == "zmq") {
    a.backend = backend_kind::zmq;
    if (a.flavor != "tcp" && a.flavor != "ipc")
      return bad(text, "zmq supports tcp and ipc, not '" + a.flavor + "'");
    if (rest.empty()) return bad(text, "zmq needs an endpoint");
    if (a.flavor == "tcp" && rest.find(':') == std::string_view::npos)
      return bad(text, "zmq+tcp needs <host>:<port> (port 0 for an ephemeral one)");
    a.location = std::string(rest);
    return a;
  }
  if (family == "fabric") {
    a.backend = backend_kind::fabric;
    if (a.flavor != "shm" && a.flavor != "tcp" && a.flavor != "udp" && a.flavor != "verbs" &&
        a.flavor != "efa")
      return bad(text, "fabric providers: shm, tcp, udp, verbs, efa; not '" + a.flavor + "'");
    auto q = rest.find('?');
    a.location = std::string(rest.substr(0, q));
    if (q != std::string_view::npos) {
      std::string_view query = rest.substr(q + 1);
      if (query.substr(0, 5) != "name=") return bad(text, "fabric query must be ?name=<hex>");
      a.fabric_name_hex = std::string(query.substr(5));
      if (a.fabric_name_hex.empty() || !is_hex(a.fabric_name_hex))
        return bad(text, "fabric name must be non-empty even-length hex");
    }
    return a;
  }
  return bad(text, "unknown scheme family '" + std::string(family) + "'");
}

std::string address::to_string() const {
  switch (backend) {
  case backend_kind::inproc:
    return "inproc://" + location;
  case backend_kind::zmq:
    return "zmq+" + flavor + "://" + location;
  case backend_kind::fabric: {
    std::string s = "fabric+" + flavor + "://" + location;
    if (!fabric_name_hex.empty()) s += "?name=" + fabric_name_hex;
    return s;
  }
  }
  return {};
}

} // namespace duet::transport
