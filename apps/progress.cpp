#include "apps/progress.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <unistd.h>

namespace duet::apps {

progress::progress(std::FILE* out, bool terminal, std::string title)
    : out_(out), terminal_(terminal), title_(std::move(title)) {}

progress::progress(std::string title)
    : progress(stderr, isatty(fileno(stderr)) != 0, std::move(title)) {}

progress::~progress() {
  if (!finished_ && terminal_) fmt::print(out_, "\n"); // never leave the cursor mid-bar
}

void progress::update(double fraction, std::string_view what) {
  fraction = std::clamp(fraction, 0.0, 1.0);
  const int percent = static_cast<int>(fraction * 100.0 + 0.5);
  if (terminal_) {
    constexpr int width = 30;
    const int filled = static_cast<int>(fraction * width + 0.5);
    // \r + erase line: redraw in place.
    fmt::print(out_, "\r\x1b[2K{} [{}{}] {:3d}% {}", title_, std::string(filled, '#'),
               std::string(width - filled, '.'), percent, what);
    std::fflush(out_);
    return;
  }
  const int decile = percent / 10;
  if (what == last_step_ && decile == last_decile_) return;
  last_step_ = std::string{what};
  last_decile_ = decile;
  fmt::print(out_, "progress: {} {:3d}% {}\n", title_, percent, what);
  std::fflush(out_);
}

void progress::finish(std::string_view message) {
  if (finished_) return;
  finished_ = true;
  const double elapsed_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (terminal_)
    fmt::print(out_, "\r\x1b[2K{} {} ({:.2f} s)\n", title_, message, elapsed_s);
  else
    fmt::print(out_, "progress: {} done: {} ({:.2f} s)\n", title_, message, elapsed_s);
  std::fflush(out_);
}

} // namespace duet::apps
