#pragma once

// A read-only memory mapping of a whole file. Loaders keep a shared_ptr to it in
// model_weights::storage so tensor views stay valid as long as any model copy lives.

#include <cstddef>
#include <memory>
#include <string>

namespace duet::engine {

class mapped_file {
public:
  /// Maps `path` read-only. Throws engine_error(io_error) naming the file and the OS reason.
  /// An empty file maps to data() == nullptr, size() == 0.
  static std::shared_ptr<const mapped_file> open(const std::string& path);

  ~mapped_file();
  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;

  const std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }
  const std::string& path() const { return path_; }

  /// Drops this process's copy of the whole pages inside [p, p + n) (madvise MADV_DONTNEED):
  /// for data that was copied elsewhere and is no longer read here. The mapping stays valid; a
  /// later read faults the pages back in from the file. Ranges outside the mapping are ignored.
  void release(const void* p, std::size_t n) const;

private:
  mapped_file() = default;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  std::string path_;
};

} // namespace duet::engine
