#include "engine/huge_page_memory.hpp"

#include "engine/error.hpp"

#include <sys/mman.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

namespace duet::engine {

namespace {
constexpr std::size_t huge_page_bytes = std::size_t{2} << 20;
} // namespace

huge_page_memory::huge_page_memory(std::size_t bytes, std::string_view what,
                                   std::string_view remedy) {
  auto refuse = [&](const std::string& reason) {
    std::string message = "cannot reserve " + std::to_string(bytes) + " bytes for " +
                          std::string(what) + " (" + reason + ")";
    if (!remedy.empty()) message += ": " + std::string(remedy);
    throw engine_error(engine_errc::out_of_capacity, message);
  };
  if (bytes > std::numeric_limits<std::size_t>::max() - 2 * huge_page_bytes)
    refuse("the size overflows");
  size_ = (bytes + huge_page_bytes - 1) / huge_page_bytes * huge_page_bytes;
  void* p =
      ::mmap(nullptr, mapped_bytes(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) refuse(std::strerror(errno));
  mapping_ = p;
  const auto at = reinterpret_cast<std::uintptr_t>(p);
  data_ =
      reinterpret_cast<std::byte*>((at + huge_page_bytes - 1) / huge_page_bytes * huge_page_bytes);
  (void)::madvise(data_, size_, MADV_HUGEPAGE); // advice: where THP is off, 4 KiB pages
}

std::size_t huge_page_memory::mapped_bytes() const {
  return size_ + huge_page_bytes;
}

huge_page_memory::~huge_page_memory() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapped_bytes());
}

huge_page_memory::huge_page_memory(huge_page_memory&& other) noexcept
    : mapping_(std::exchange(other.mapping_, nullptr)), data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

huge_page_memory& huge_page_memory::operator=(huge_page_memory&& other) noexcept {
  if (this != &other) {
    if (mapping_ != nullptr) ::munmap(mapping_, mapped_bytes());
    mapping_ = std::exchange(other.mapping_, nullptr);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

} // namespace duet::engine
