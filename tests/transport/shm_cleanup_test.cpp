// Stale libfabric shm regions (left by SIGKILLed processes) are removed; live ones are not.
#include "transport/shm_cleanup.hpp"

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

namespace fs = std::filesystem;

TEST_CASE("stale shm regions of dead pids and of this pid are removed, live and foreign ones "
          "kept") {
  const fs::path dir = fs::temp_directory_path() / ("duet-shm-test-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  // A pid that ran and is gone: a child that exited and was reaped.
  pid_t dead = fork();
  REQUIRE(dead >= 0);
  if (dead == 0) _exit(0);
  REQUIRE(waitpid(dead, nullptr, 0) == dead);
  // A pid that runs: a child that waits until we are done.
  int hold[2];
  REQUIRE(pipe(hold) == 0);
  pid_t alive = fork();
  REQUIRE(alive >= 0);
  if (alive == 0) {
    close(hold[1]);
    char c;
    (void)!read(hold[0], &c, 1);
    _exit(0);
  }
  close(hold[0]);
  auto touch = [&](const std::string& name) { std::ofstream{dir / name} << "x"; };
  const std::string dead_region = std::to_string(dead) + ":0:0";
  const std::string own_region = std::to_string(getpid()) + ":3:0";
  const std::string live_region = std::to_string(alive) + ":1:0";
  for (const auto& n : {dead_region, own_region, live_region, std::string("1:0:0"),
                        std::string("12:x:0"), std::string("sem.other"), std::string("77:0")})
    touch(n);
  INFO("dead pid " << dead << ", live pid " << alive);
  CHECK(duet::transport::remove_stale_shm_regions(dir.string()) == 2);
  CHECK_FALSE(fs::exists(dir / dead_region));
  CHECK_FALSE(fs::exists(dir / own_region));
  CHECK(fs::exists(dir / live_region));
  CHECK(fs::exists(dir / "1:0:0")); // init runs
  CHECK(fs::exists(dir / "12:x:0"));
  CHECK(fs::exists(dir / "sem.other"));
  CHECK(fs::exists(dir / "77:0"));
  close(hold[1]);
  waitpid(alive, nullptr, 0);
  fs::remove_all(dir);
  CHECK(duet::transport::remove_stale_shm_regions((dir / "missing").string()) == 0);
}

TEST_CASE("an shm endpoint name gives its process") {
  auto name = [](const std::string& s) {
    std::vector<std::byte> b;
    for (char c : s) b.push_back(static_cast<std::byte>(c));
    b.push_back(std::byte{0});
    return b;
  };
  CHECK(duet::transport::shm_endpoint_pid(name("fi_shm://24372:0:0")) == 24372);
  CHECK(duet::transport::shm_endpoint_pid(name("fi_shm://7:12:3")) == 7);
  CHECK(duet::transport::shm_endpoint_pid(name("fi_shm://24372:0")) == 0); // two fields
  CHECK(duet::transport::shm_endpoint_pid(name("fi_sockets://24372:0:0")) == 0);
  CHECK(duet::transport::shm_endpoint_pid(name("fi_shm://x:0:0")) == 0);
  CHECK(duet::transport::shm_endpoint_pid({}) == 0);
  CHECK(duet::transport::process_running(getpid()));
}
