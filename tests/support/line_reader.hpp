#pragma once

// Reads a child process's output one line at a time with a deadline (poll + read), for the
// tests that drive `duet` processes through their stdout.

#include <chrono>
#include <optional>
#include <poll.h>
#include <string>
#include <unistd.h>

namespace duet::test {

class line_reader {
public:
  /// Reads from `fd` (not owned).
  explicit line_reader(int fd) : fd_(fd) {}

  /// The next line (without its newline), or nullopt at end of output or after `timeout`.
  std::optional<std::string> next(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      if (auto nl = buffer_.find('\n'); nl != std::string::npos) {
        auto line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return line;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return std::nullopt;
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char chunk[4096];
      auto n = ::read(fd_, chunk, sizeof chunk);
      if (n <= 0) return std::nullopt;
      buffer_.append(chunk, static_cast<std::size_t>(n));
    }
  }

private:
  int fd_;
  std::string buffer_;
};

} // namespace duet::test
