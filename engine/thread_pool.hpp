#pragma once

// A small persistent pool for the forward pass's outer loops. The engine shares 2 cores with
// CAF's scheduler, so idle workers sleep on a condition variable (never spin), and the calling
// thread does a share of the work itself: threads = 1 means no extra thread at all.

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
  std::uint64_t generation_ = 0; ///< bumped per job so sleepers know there is new work
  std::int64_t chunks_ = 0;      ///< chunks of the current job
  std::int64_t next_ = 0;        ///< next unclaimed chunk
  bool open_ = false;            ///< the caller still waits on the current job
  int active_ = 0;               ///< workers inside the current job
  bool stop_ = false;
};

} // namespace duet::engine
