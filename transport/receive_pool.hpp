#pragma once

// Reusable receive buffers for a backend that copies arriving payloads (zmq copies each large
// payload out of libzmq's frames). A buffer goes back to the pool when the last holder of its
// segment drops it, so a steady stream reuses memory that is already faulted in rather than
// allocating, and page-faulting, once per arrival. Sizes are rounded up to a power of two
// (at least 64 KiB) so that segments of varying token counts still find a buffer.
// Bounded: at most `idle_bytes_max` bytes wait idle in the pool; a buffer returned beyond that
// is freed. Thread-safe: buffers come back on whichever thread drops the segment.

#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

namespace duet::transport {

class receive_pool : public std::enable_shared_from_this<receive_pool> {
public:
  /// Storage for one payload: `data` stays valid while `owner` lives; dropping the last copy
  /// of `owner` returns the buffer to the pool (or frees it).
  struct lease {
    std::shared_ptr<void> owner;
    std::byte* data = nullptr;
  };

  static std::shared_ptr<receive_pool> make(std::size_t idle_bytes_max);

  /// A buffer of at least `size_bytes` bytes (64-byte aligned), from the pool when one of its
  /// size class is idle. Throws std::bad_alloc when memory runs out.
  lease take(std::size_t size_bytes);

  /// Bytes in idle buffers now.
  std::size_t idle_bytes() const;

  /// The size class (buffer size) a request of `size_bytes` gets.
  static std::size_t size_class(std::size_t size_bytes);

  ~receive_pool();

private:
  explicit receive_pool(std::size_t idle_bytes_max) : idle_bytes_max_(idle_bytes_max) {}
  void give_back(void* block, std::size_t size_class);

  const std::size_t idle_bytes_max_;
  mutable std::mutex mutex_;
  std::map<std::size_t, std::vector<void*>> idle_; ///< size class -> idle buffers
  std::size_t idle_bytes_ = 0;
};

} // namespace duet::transport
