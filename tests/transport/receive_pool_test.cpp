// receive_pool: buffers come back for reuse, the idle memory stays within its bound, and a
// buffer may outlive the pool's last other owner.
#include "transport/receive_pool.hpp"

#include <catch2/catch.hpp>

#include <cstring>
#include <thread>

using duet::transport::receive_pool;

TEST_CASE("receive_pool reuses a returned buffer of the same size class") {
  auto pool = receive_pool::make(8 << 20);
  std::byte* first = nullptr;
  {
    auto lease = pool->take(1 << 20);
    first = lease.data;
    std::memset(lease.data, 1, 1 << 20); // writable over the whole size asked for
    CHECK(pool->idle_bytes() == 0);
  }
  CHECK(pool->idle_bytes() == receive_pool::size_class(1 << 20));
  auto again = pool->take((1 << 20) - 4096); // the same class
  CHECK(again.data == first);
  CHECK(pool->idle_bytes() == 0);
  auto other = pool->take(3 << 20); // another class: a fresh buffer
  CHECK(other.data != first);
  CHECK(reinterpret_cast<std::uintptr_t>(other.data) % 64 == 0);
}

TEST_CASE("receive_pool keeps at most its bound idle and frees the rest") {
  CHECK(receive_pool::size_class(1) == 64 << 10);
  CHECK(receive_pool::size_class((1 << 20) + 1) == 2 << 20);
  auto pool = receive_pool::make(3 << 20);
  {
    std::vector<receive_pool::lease> held;
    for (int i = 0; i < 5; ++i) held.push_back(pool->take(1 << 20));
  } // five 1 MiB buffers come back; three fit
  CHECK(pool->idle_bytes() == (3 << 20));
}

TEST_CASE("a receive_pool buffer may be dropped on another thread after the pool's owner") {
  auto pool = receive_pool::make(1 << 20);
  auto lease = pool->take(100);
  std::weak_ptr<receive_pool> watch = pool;
  pool.reset();
  CHECK_FALSE(watch.expired()); // the lease keeps it
  std::thread([l = std::move(lease)]() mutable { l.owner.reset(); }).join();
  CHECK(watch.expired());
}
