#pragma once

// The backends behind listen()/connect() (transport.cpp picks one by address). Internal to
// transport/: users go through transport.hpp.

#include "transport/transport.hpp"

namespace duet::transport {

result<std::unique_ptr<receiver>> inproc_listen(const address& at, const options& opts);
result<std::unique_ptr<sender>> inproc_connect(const address& to, const options& opts);

result<std::unique_ptr<receiver>> zmq_listen(const address& at, const options& opts);
result<std::unique_ptr<sender>> zmq_connect(const address& to, const options& opts);

result<std::unique_ptr<receiver>> fabric_listen(const address& at, const options& opts);
result<std::unique_ptr<sender>> fabric_connect(const address& to, const options& opts);

} // namespace duet::transport
