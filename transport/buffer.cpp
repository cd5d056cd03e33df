#include "transport/buffer.hpp"

#include <cstdlib>
#include <cstring>
#include <new>

namespace duet::transport {

buffer buffer::allocate(std::size_t size_bytes) {
  buffer b;
  // aligned_alloc wants a multiple of the alignment; round up (never zero bytes).
  std::size_t rounded = (size_bytes + alignment - 1) / alignment * alignment;
  if (rounded == 0) rounded = alignment;
  void* p = std::aligned_alloc(alignment, rounded);
  if (p == nullptr) throw std::bad_alloc();
  b.owner_ = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  b.data_ = static_cast<std::byte*>(p);
  b.size_ = size_bytes;
  return b;
}

buffer buffer::copy_of(std::span<const std::byte> bytes) {
  buffer b = allocate(bytes.size());
  if (!bytes.empty()) std::memcpy(b.data_, bytes.data(), bytes.size());
  return b;
}

buffer buffer::share(std::shared_ptr<void> owner, std::byte* data, std::size_t size_bytes) {
  buffer b;
  b.owner_ = std::move(owner);
  b.data_ = data;
  b.size_ = size_bytes;
  return b;
}

} // namespace duet::transport
