#include "engine/mapped_file.hpp"

#include "engine/error.hpp"

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace duet::engine {

namespace {

[[noreturn]] void fail(const std::string& path, const char* what, int err) {
  throw engine_error(engine_errc::io_error, path + ": cannot " + what + ": " + std::strerror(err));
}

} // namespace

std::shared_ptr<const mapped_file> mapped_file::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, "open", errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    fail(path, "stat", err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw engine_error(engine_errc::io_error, path + ": not a regular file");
  }
  std::shared_ptr<mapped_file> file{new mapped_file()};
  file->path_ = path;
  file->size_ = static_cast<std::size_t>(st.st_size);
  if (file->size_ > 0) {
    void* p = ::mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      fail(path, "mmap", err);
    }
    file->data_ = static_cast<const std::byte*>(p);
  }
  ::close(fd); // the mapping keeps the file alive
  return file;
}

mapped_file::~mapped_file() {
  if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
}

void mapped_file::release(const void* p, std::size_t n) const {
  const auto begin = reinterpret_cast<std::uintptr_t>(data_), end = begin + size_;
  auto lo = reinterpret_cast<std::uintptr_t>(p), hi = lo + n;
  if (data_ == nullptr || lo < begin || hi > end || lo >= hi) return;
  const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  lo = (lo + page - 1) / page * page;
  hi = hi / page * page;
  // Advice only: a failure leaves the pages mapped, which is what not calling would do.
  if (lo < hi) (void)::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

} // namespace duet::engine
