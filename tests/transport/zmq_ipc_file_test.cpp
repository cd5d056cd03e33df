// zmq+ipc receivers remove the socket file they bound (libzmq 4.3 leaves it behind), and only
// their own.
#include "transport/transport.hpp"

#include <catch2/catch.hpp>

#include <filesystem>
#include <string>
#include <unistd.h>

using namespace duet::transport;
namespace fs = std::filesystem;

namespace {

std::string socket_path(const std::string& tag) {
  return (fs::temp_directory_path() /
          ("duet-test-ipc-file-" + tag + "-" + std::to_string(::getpid())))
      .string();
}

} // namespace

TEST_CASE("a zmq+ipc receiver removes its socket file when it closes") {
  const std::string path = socket_path("own");
  {
    auto rx = listen("zmq+ipc://" + path);
    REQUIRE(rx.ok());
    CHECK(fs::is_socket(path));
  }
  CHECK_FALSE(fs::exists(path));
}

TEST_CASE("a zmq+ipc receiver leaves the file of a later receiver that took its path over") {
  const std::string path = socket_path("taken");
  auto first = listen("zmq+ipc://" + path);
  REQUIRE(first.ok());
  // libzmq's bind replaces an existing file: the second receiver now owns the path.
  auto second = listen("zmq+ipc://" + path);
  REQUIRE(second.ok());
  first->reset();
  CHECK(fs::is_socket(path));
  second->reset();
  CHECK_FALSE(fs::exists(path));
}
