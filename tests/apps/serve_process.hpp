#pragma once

// Runs `duet serve --port 0 ...` as a child process for end-to-end tests: waits (bounded) for
// its "listening on http://127.0.0.1:PORT" line and for GET /health, and stops it in the
// destructor (SIGTERM, then SIGKILL after a bounded wait) so no process outlives the test.

#include "http_test_client.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <poll.h>
#include <spawn.h>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

extern char** environ;

namespace duet::test {

class serve_process {
public:
  explicit serve_process(std::vector<std::string> args) {
    log_path_ = "/tmp/duet-serve-test-" + std::to_string(getpid()) + "-" +
                std::to_string(counter()++) + ".log";
    int out[2];
    REQUIRE(pipe(out) == 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&actions, out[0]);
    posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, log_path_.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    std::vector<std::string> argv_s = {DUET_BINARY_DIR "/duet", "serve", "--port", "0"};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    int rc = posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    close(out[1]);
    if (rc != 0) {
      close(out[0]);
      FAIL("cannot start " << argv[0] << ": " << std::strerror(rc));
    }
    // Read stdout until the listening line (bounded: 60 s, the model loads in well under 1 s).
    std::string seen;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (port_ == 0 && std::chrono::steady_clock::now() < deadline) {
      pollfd p{out[0], POLLIN, 0};
      if (poll(&p, 1, 200) <= 0) continue;
      char buf[256];
      ssize_t n = read(out[0], buf, sizeof buf);
      if (n <= 0) break; // the child exited
      seen.append(buf, static_cast<std::size_t>(n));
      auto at = seen.find("listening on http://127.0.0.1:");
      if (at != std::string::npos && seen.find('\n', at) != std::string::npos)
        port_ = std::atoi(seen.c_str() + at + std::string("listening on http://127.0.0.1:").size());
    }
    close(out[0]);
    if (port_ == 0) FAIL("duet serve did not print its listening line; stderr:\n" << log());
    for (int i = 0; i < 500 && http_get(port_, "/health").status != 200; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10)); // bounded poll
    if (http_get(port_, "/health").status != 200) FAIL("duet serve /health never answered");
  }

  ~serve_process() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      int status = 0;
      bool exited = false;
      for (int i = 0; i < 1000 && !exited; ++i) { // up to 10 s for a clean shutdown
        exited = waitpid(pid_, &status, WNOHANG) == pid_;
        if (!exited) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      if (!exited) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &status, 0);
      }
    }
    std::remove(log_path_.c_str());
  }

  serve_process(const serve_process&) = delete;
  serve_process& operator=(const serve_process&) = delete;

  int port() const { return port_; }

  /// What the server wrote to stderr so far (its logs).
  std::string log() const {
    std::ifstream in{log_path_};
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }

  /// Stops the server with SIGTERM and returns its exit status (bounded wait).
  int terminate() {
    kill(pid_, SIGTERM);
    int status = 0;
    for (int i = 0; i < 1000; ++i) {
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return -1;
  }

private:
  static int& counter() {
    static int n = 0;
    return n;
  }
  pid_t pid_ = -1;
  int port_ = 0;
  std::string log_path_;
};

} // namespace duet::test
