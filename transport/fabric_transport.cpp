// placeholder replaced below
#include "transport/backends.hpp"
namespace duet::transport {
result<std::unique_ptr<receiver>> fabric_listen(const address& at, const options&) {
  return fail(errc::backend_unavailable, at.to_string() + ": fabric backend not built yet");
}
result<std::unique_ptr<sender>> fabric_connect(const address& to, const options&) {
  return fail(errc::backend_unavailable, to.to_string() + ": fabric backend not built yet");
}
} // namespace duet::transport
