#include "transport/receive_pool.hpp"

#include <bit>
#include <cstdlib>
#include <new>

namespace duet::transport {

namespace {
constexpr std::size_t smallest_class = std::size_t{64} << 10;
constexpr std::size_t alignment = 64;
} // namespace

std::shared_ptr<receive_pool> receive_pool::make(std::size_t idle_bytes_max) {
  return std::shared_ptr<receive_pool>(new receive_pool(idle_bytes_max));
}

std::size_t receive_pool::size_class(std::size_t size_bytes) {
  return size_bytes <= smallest_class ? smallest_class : std::bit_ceil(size_bytes);
}

receive_pool::lease receive_pool::take(std::size_t size_bytes) {
  const std::size_t cls = size_class(size_bytes);
  void* block = nullptr;
  {
    std::lock_guard guard{mutex_};
    if (auto it = idle_.find(cls); it != idle_.end() && !it->second.empty()) {
      block = it->second.back();
      it->second.pop_back();
      idle_bytes_ -= cls;
    }
  }
  if (block == nullptr) {
    block = std::aligned_alloc(alignment, cls);
    if (block == nullptr) throw std::bad_alloc();
  }
  // The deleter keeps the pool alive: a buffer may outlive the receiver that took it.
  std::shared_ptr<void> owner(
      block, [pool = shared_from_this(), cls](void* b) { pool->give_back(b, cls); });
  return {std::move(owner), static_cast<std::byte*>(block)};
}

void receive_pool::give_back(void* block, std::size_t cls) {
  {
    std::lock_guard guard{mutex_};
    if (idle_bytes_ + cls <= idle_bytes_max_) {
      try {
        idle_[cls].push_back(block);
        idle_bytes_ += cls;
        return;
      } catch (const std::bad_alloc&) { // no room to list it: free it instead
      }
    }
  }
  std::free(block);
}

std::size_t receive_pool::idle_bytes() const {
  std::lock_guard guard{mutex_};
  return idle_bytes_;
}

receive_pool::~receive_pool() {
  for (auto& [cls, blocks] : idle_)
    for (void* b : blocks) std::free(b);
}

} // namespace duet::transport
