#include "apps/log.hpp"

#include <spdlog/sinks/stdout_sinks.h>

#include <stdexcept>

namespace duet::apps {

std::shared_ptr<spdlog::logger> make_logger(const std::string& name, const std::string& level) {
  auto lvl = spdlog::level::from_str(level);
  // from_str answers `off` for anything it does not know; only accept `off` when asked for.
  if (lvl == spdlog::level::off && level != "off")
    throw std::invalid_argument("log level must be trace, debug, info, warn, error or off, got '" +
                                level + "'");
  auto logger =
      std::make_shared<spdlog::logger>(name, std::make_shared<spdlog::sinks::stderr_sink_mt>());
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ level=%l %v", spdlog::pattern_time_type::utc);
  logger->set_level(lvl);
  logger->flush_on(spdlog::level::info);
  return logger;
}

std::string logfmt_value(std::string_view value) {
  bool quote = value.empty();
  for (char c : value)
    if (c == ' ' || c == '"' || c == '=' || c == '\n' || c == '\\') quote = true;
  if (!quote) return std::string{value};
  std::string out = "\"";
  for (char c : value) {
    if (c == '"' || c == '\\') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out + "\"";
}

} // namespace duet::apps
