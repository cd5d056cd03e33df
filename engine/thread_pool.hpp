#pragma once

// A small persistent pool for the forward pass's outer loops. The calling thread does a share
// of the work itself: threads = 1 means no extra thread at all.
//
// Waiting is spin-then-sleep. A decode step is ~60 parallel_for calls a few tens of
// microseconds apart (a 768x768 q8_0 matmul reads 0.6 MB: ~25 us), while waking a thread
// sleeping on a condition variable costs tens of microseconds on this VM: with sleep-only
// waiting the second thread joined most jobs after the caller had done them (stories110M q8_0,
// 2 threads ran 1.2x one thread). So a worker that finishes a job polls for the next one for up
// to `worker_spin` before it sleeps, and the caller polls for the last running chunk for up to
// `caller_spin` before it sleeps (200 us each). Both are bounded: an idle pool sleeps (no
// busy-waiting when idle). The cost is on a contended machine: a spinning worker holds a core
// another process wants for up to 200 us after each job. With threads = 1 (the fabric's
// default per actor, next to CAF's scheduler on 2 cores) there is no worker and no spinning.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace duet::engine {

class thread_pool {
public:
  /// `threads` >= 1 workers in total, the caller included (so threads - 1 are started).
  explicit thread_pool(int threads);
  ~thread_pool();
  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;

  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  /// Runs fn(begin, end, worker) over [0, n) split into contiguous chunks (a few per thread,
  /// boundaries multiples of 4 so matmul row tiles stay whole) and waits for all of them.
  /// Threads claim chunks as they arrive, so a worker the OS schedules late (the 2 cores are
  /// shared) costs nothing: the caller does its chunks. `worker` in [0, threads()) indexes
  /// per-worker scratch. Not reentrant.
  template <class Fn>
  void parallel_for(std::int64_t n, Fn&& fn) {
    if (n <= 0) return;
    if (workers_.empty() || n == 1) {
      fn(std::int64_t{0}, n, 0);
      return;
    }
    run(
        n,
        [](void* ctx, std::int64_t b, std::int64_t e, int w) { (*static_cast<Fn*>(ctx))(b, e, w); },
        &fn);
  }

private:
  using task_fn = void (*)(void* ctx, std::int64_t begin, std::int64_t end, int worker);
  void run(std::int64_t n, task_fn fn, void* ctx);
  void worker_main(int index);
  /// Claims and runs chunks until none is left; called and returns with `lock` held.
  void run_chunks(std::unique_lock<std::mutex>& lock, int worker);

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  task_fn fn_ = nullptr;
  void* ctx_ = nullptr;
  std::int64_t n_ = 0;
  // Written under mutex_; generation_, active_ and stop_ are also polled without it.
  std::atomic<std::uint64_t> generation_{0}; ///< bumped per job so waiters know there is work
  std::int64_t chunks_ = 0;                  ///< chunks of the current job
  std::int64_t next_ = 0;                    ///< next unclaimed chunk
  bool open_ = false;                        ///< the caller still waits on the current job
  std::atomic<int> active_{0};               ///< workers inside the current job
  std::atomic<bool> stop_{false};
};

} // namespace duet::engine
