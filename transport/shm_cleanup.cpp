#include "transport/shm_cleanup.hpp"

#include <cerrno>
#include <filesystem>
#include <optional>
#include <signal.h>
#include <system_error>
#include <unistd.h>

namespace duet::transport {

namespace {

/// The pid of a name of the form "<pid>:<digits>:<digits>", or nullopt.
std::optional<pid_t> shm_region_pid(const std::string& name) {
  long long pid = 0;
  std::size_t i = 0, fields = 0, digits = 0;
  for (; i <= name.size(); ++i) {
    if (i == name.size() || name[i] == ':') {
      if (digits == 0) return std::nullopt;
      ++fields;
      digits = 0;
      if (i == name.size()) break;
      continue;
    }
    if (name[i] < '0' || name[i] > '9' || digits > 9) return std::nullopt;
    if (fields == 0) pid = pid * 10 + (name[i] - '0');
    ++digits;
  }
  if (fields != 3 || pid <= 0) return std::nullopt;
  return static_cast<pid_t>(pid);
}

} // namespace

bool process_running(pid_t pid) {
  return ::kill(pid, 0) == 0 || errno == EPERM; // EPERM: it runs, as another user
}

pid_t shm_endpoint_pid(std::span<const std::byte> name) {
  std::string s(reinterpret_cast<const char*>(name.data()), name.size());
  while (!s.empty() && s.back() == '\0') s.pop_back();
  const std::string prefix = "fi_shm://";
  if (s.rfind(prefix, 0) != 0) return 0;
  return shm_region_pid(s.substr(prefix.size())).value_or(0);
}

std::size_t remove_stale_shm_regions(const std::string& dir) {
  std::size_t removed = 0;
  std::error_code ec;
  const pid_t self = ::getpid();
  for (std::filesystem::directory_iterator it{dir, ec}, end; !ec && it != end; it.increment(ec)) {
    auto pid = shm_region_pid(it->path().filename().string());
    if (!pid || (*pid != self && process_running(*pid))) continue;
    std::error_code rm;
    if (std::filesystem::remove(it->path(), rm)) ++removed;
  }
  return removed;
}

} // namespace duet::transport
