#include "actors/errors.hpp"

#include <caf/actor_system_config.hpp>
#include <caf/message.hpp>
#include <caf/sec.hpp>

namespace duet::actors {

std::string to_string(fabric_errc code) {
  switch (code) {
  case fabric_errc::none:
    return "none";
  case fabric_errc::bad_request:
    return "bad_request";
  case fabric_errc::prompt_too_long:
    return "prompt_too_long";
  case fabric_errc::overloaded:
    return "overloaded";
  case fabric_errc::no_capacity:
    return "no_capacity";
  case fabric_errc::does_not_fit:
    return "does_not_fit";
  case fabric_errc::actor_crashed:
    return "actor_crashed";
  case fabric_errc::retries_exhausted:
    return "retries_exhausted";
  case fabric_errc::kv_corrupt:
    return "kv_corrupt";
  case fabric_errc::kv_timeout:
    return "kv_timeout";
  case fabric_errc::deadline_exceeded:
    return "deadline_exceeded";
  case fabric_errc::cancelled:
    return "cancelled";
  case fabric_errc::engine_failure:
    return "engine_failure";
  case fabric_errc::transport_failure:
    return "transport_failure";
  case fabric_errc::injected_fault:
    return "injected_fault";
  case fabric_errc::protocol:
    return "protocol";
  }
  return "unknown(" + std::to_string(static_cast<int>(code)) + ")";
}

caf::error make_error(fabric_errc code, std::string context) {
  return caf::error{static_cast<std::uint8_t>(code), duet_error_atom::value,
                    caf::make_message(std::move(context))};
}

fabric_errc fabric_code(const caf::error& err) {
  if (!err || err.category() != duet_error_atom::value) return fabric_errc::none;
  return static_cast<fabric_errc>(err.code());
}

std::string error_context(const caf::error& err) {
  if (err.category() != duet_error_atom::value) return {};
  const auto& ctx = err.context();
  if (ctx.size() == 1 && ctx.match_element<std::string>(0)) return ctx.get_as<std::string>(0);
  return {};
}

std::string describe(const caf::error& err) {
  if (!err) return "no error";
  if (err.category() == duet_error_atom::value) {
    auto text = to_string(fabric_code(err));
    auto ctx = error_context(err);
    if (!ctx.empty()) text += ": " + ctx;
    return text;
  }
  if (err.category() == caf::atom("system"))
    return "caf: " + caf::to_string(static_cast<caf::sec>(err.code()));
  return caf::to_string(err);
}

service_error to_service_error(fabric_errc code) {
  switch (code) {
  case fabric_errc::none:
    return service_error::none;
  case fabric_errc::bad_request:
    return service_error::bad_request;
  case fabric_errc::prompt_too_long:
    return service_error::prompt_too_long;
  case fabric_errc::overloaded:
  case fabric_errc::deadline_exceeded:
    return service_error::overloaded;
  case fabric_errc::no_capacity:
  case fabric_errc::does_not_fit:
    return service_error::no_capacity;
  default:
    return service_error::internal;
  }
}

void add_fabric_error_category(caf::actor_system_config& cfg) {
  cfg.add_error_category(duet_error_atom::value,
                         [](std::uint8_t code, caf::atom_value, const caf::message& ctx) {
                           auto text = "duet: " + to_string(static_cast<fabric_errc>(code));
                           if (ctx.size() == 1 && ctx.match_element<std::string>(0))
                             text += " (" + ctx.get_as<std::string>(0) + ")";
                           return text;
                         });
}

} // namespace duet::actors
