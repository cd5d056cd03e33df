#pragma once

// Structured logs for `duet serve`: one line per event, logfmt (key=value), UTC timestamps, and
// a request_id on every line ("-" for lines that belong to no request), so one grep follows a
// request through admission, its tokens' outcome and its end.

#include <spdlog/spdlog.h>

#include <memory>
#include <string>
#include <string_view>

namespace duet::apps {

/// A logger writing to stderr with the pattern `<time> level=<level> <message>`.
/// `level` is trace|debug|info|warn|error|off; throws std::invalid_argument otherwise.
std::shared_ptr<spdlog::logger> make_logger(const std::string& name, const std::string& level);

/// `value` quoted for logfmt when it holds spaces, quotes or '=' (or is empty).
std::string logfmt_value(std::string_view value);

} // namespace duet::apps
