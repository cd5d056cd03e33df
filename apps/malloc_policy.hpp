#pragma once

// The duet process's glibc malloc thresholds, set once at start (main.cpp).

namespace duet::apps {

/// Fixes glibc's heap-trim and mmap thresholds at 64 MiB and 32 MiB, the values glibc's own
/// dynamic thresholds reach once the process frees a 32 MiB block (a freed mmapped block of S
/// bytes raises them to S and 2S), instead of starting at 128 KiB. Why: libzmq's I/O thread mallocs
/// every received frame over 8 KiB; a receiver that holds a few frames while it verifies them
/// leaves freed blocks at the top of that thread's heap, glibc returns them to the kernel at 128
/// KiB, and the next frames fault their pages back in (~13 us a page on the VMs measured). Does
/// nothing when the user set any glibc.malloc tunable in GLIBC_TUNABLES (theirs win), or under a
/// sanitizer's allocator.
void apply_malloc_policy();

} // namespace duet::apps
