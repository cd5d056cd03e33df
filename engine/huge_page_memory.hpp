#pragma once

// Anonymous memory for the large buffers the forward pass streams or reads scattered (the
// packed q8_0 weights, the KV pool): pages untouched until written, starting on a 2 MiB
// boundary, with transparent huge pages asked for (madvise; in THP "madvise" mode nothing else
// gets them). On 4 KiB pages a stream of weights takes a TLB miss every 4 KiB (a two-level walk
// in a VM), and each first write faults 4 KiB at a time (~13 us a fault on the VMs measured).

#include <cstddef>
#include <string_view>

namespace duet::engine {

class huge_page_memory {
public:
  huge_page_memory() = default;
  /// Reserves `bytes` (rounded up to 2 MiB). Throws engine_error(out_of_capacity) naming `what`
  /// and the OS reason when the system refuses, followed by `remedy` when one is given.
  huge_page_memory(std::size_t bytes, std::string_view what, std::string_view remedy = {});
  ~huge_page_memory();
  huge_page_memory(huge_page_memory&& other) noexcept;
  huge_page_memory& operator=(huge_page_memory&& other) noexcept;
  huge_page_memory(const huge_page_memory&) = delete;
  huge_page_memory& operator=(const huge_page_memory&) = delete;

  std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }

private:
  /// Bytes mapped at mapping_: size_ and room to start on a 2 MiB boundary.
  std::size_t mapped_bytes() const;

  void* mapping_ = nullptr;   ///< what mmap returned (it starts up to 2 MiB before data_)
  std::byte* data_ = nullptr; ///< the first 2 MiB boundary in the mapping
  std::size_t size_ = 0;      ///< usable bytes from data_, a multiple of 2 MiB
};

} // namespace duet::engine
