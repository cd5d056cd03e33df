#include "transport/error.hpp"

namespace duet::transport {

std::string_view errc_name(errc e) {
  switch (e) {
  case errc::ok:
    return "ok";
  case errc::timeout:
    return "timeout";
  case errc::peer_dead:
    return "peer_dead";
  case errc::corrupt:
    return "corrupt";
  case errc::truncated:
    return "truncated";
  case errc::duplicate:
    return "duplicate";
  case errc::out_of_order:
    return "out_of_order";
  case errc::oversized:
    return "oversized";
  case errc::malformed:
    return "malformed";
  case errc::backend_unavailable:
    return "backend_unavailable";
  case errc::bad_address:
    return "bad_address";
  case errc::closed:
    return "closed";
  case errc::internal:
    return "internal";
  }
  return "unknown";
}

std::string error::to_string() const {
  std::string s{errc_name(code)};
  if (!context.empty()) s += ": " + context;
  return s;
}

} // namespace duet::transport
