#pragma once

// libfabric's shm provider keeps each endpoint's region in a file /dev/shm/<pid>:<n>:<m>. A
// process that is SIGKILLed (duet's fault tests and `duet node` crashes do it on purpose) leaves
// its files behind: memory held until reboot, and when a later process gets the same pid, shm
// refuses to create its endpoint (fi_enable: Device or resource busy). So before a process opens
// its first shm endpoint, fabric_transport.cpp removes the files of pids that no longer run and
// those named with its own pid (it has no endpoint yet: they are a dead namesake's).

#include <cstddef>
#include <span>
#include <string>

#include <sys/types.h>

namespace duet::transport {

/// Removes the entries of `dir` named "<pid>:<digits>:<digits>" whose pid is not a running
/// process or is this process's. Returns how many it removed; entries it cannot remove, and
/// anything else in `dir`, are left alone.
std::size_t remove_stale_shm_regions(const std::string& dir = "/dev/shm");

/// The process of an shm endpoint, from the name libfabric's shm provider gives it
/// ("fi_shm://<pid>:<digits>:<digits>", NUL-terminated, as fi_getname returns it); 0 when the
/// name has another form.
pid_t shm_endpoint_pid(std::span<const std::byte> name);

/// Whether process `pid` runs (as any user).
bool process_running(pid_t pid);

} // namespace duet::transport
