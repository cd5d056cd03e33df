#include "transport/backends.hpp"

namespace duet::transport {

namespace {

result<void> check_options(const options& opts) {
  if (opts.segment_bytes_max == 0) return fail(errc::internal, "segment_bytes_max must be > 0");
  if (opts.window_bytes < opts.segment_bytes_max)
    return fail(errc::internal, "window_bytes " + std::to_string(opts.window_bytes) +
                                    " < segment_bytes_max " +
                                    std::to_string(opts.segment_bytes_max) +
                                    " (a largest segment could never be sent)");
  return {};
}

} // namespace

result<std::unique_ptr<receiver>> listen(std::string_view text, const options& opts) {
  auto at = address::parse(text);
  if (!at) return at.err();
  if (auto ok = check_options(opts); !ok) return ok.err();
  switch (at->backend) {
  case backend_kind::inproc:
    return inproc_listen(*at, opts);
  case backend_kind::zmq:
    return zmq_listen(*at, opts);
  case backend_kind::fabric:
    return fabric_listen(*at, opts);
  }
  return fail(errc::bad_address, std::string(text));
}

result<std::unique_ptr<sender>> connect(std::string_view text, const options& opts) {
  auto to = address::parse(text);
  if (!to) return to.err();
  if (auto ok = check_options(opts); !ok) return ok.err();
  switch (to->backend) {
  case backend_kind::inproc:
    return inproc_connect(*to, opts);
  case backend_kind::zmq:
    return zmq_connect(*to, opts);
  case backend_kind::fabric:
    return fabric_connect(*to, opts);
  }
  return fail(errc::bad_address, std::string(text));
}

} // namespace duet::transport
