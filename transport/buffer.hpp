#pragma once

// A payload buffer whose ownership moves with the segment. Moving a segment into send() hands
// the bytes to the transport (inproc passes the very same bytes to the receiver; zmq gives them
// to libzmq without copying; fabric reads them with RMA). On the receiving side the buffer may
// point into backend memory (a zmq frame, a slot of the registered fabric window): releasing it
// (destroying it) returns that memory and with it the sender's credit. So: release received
// payloads promptly, or the sender stalls — that is the back-pressure.

#include <cstddef>
#include <memory>
#include <span>

namespace duet::transport {

class buffer {
public:
  /// Alignment of buffers this layer allocates (Cap'n Proto needs 8; 64 is a cache line).
  static constexpr std::size_t alignment = 64;

  buffer() = default;
  buffer(buffer&&) noexcept = default;
  buffer& operator=(buffer&&) noexcept = default;
  buffer(const buffer&) = delete;
  buffer& operator=(const buffer&) = delete;

  /// Fresh, uninitialised, 64-byte-aligned bytes owned by the buffer.
  static buffer allocate(std::size_t size_bytes);

  /// A copy of `bytes` in fresh aligned storage.
  static buffer copy_of(std::span<const std::byte> bytes);

  /// Bytes owned by `owner` (whatever keeps them alive: a vector, a zmq frame, a pool slot);
  /// they stay valid until the last buffer holding `owner` is destroyed. `data` must point
  /// into memory kept alive by `owner`. The transport never writes through such a buffer.
  static buffer share(std::shared_ptr<void> owner, std::byte* data, std::size_t size_bytes);

  std::byte* data() { return data_; }
  const std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  std::span<const std::byte> bytes() const { return {data_, size_}; }
  std::span<std::byte> mutable_bytes() { return {data_, size_}; }

  /// The keep-alive (for backends that wrap the release, e.g. to return credit when the
  /// receiver drops the bytes). Leaves this buffer empty.
  std::shared_ptr<void> release_owner() {
    data_ = nullptr;
    size_ = 0;
    return std::move(owner_);
  }

  /// Shrinks the visible length (the bytes stay owned). Used to model truncation in tests.
  void truncate(std::size_t size_bytes) {
    if (size_bytes < size_) size_ = size_bytes;
  }

private:
  std::shared_ptr<void> owner_;
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

} // namespace duet::transport
