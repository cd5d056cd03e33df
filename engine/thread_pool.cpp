#include "engine/thread_pool.hpp"

#include "engine/error.hpp"

#include <algorithm>

namespace duet::engine {

namespace {

/// Chunks per thread: enough that a late worker's share is picked up by the others, few
/// enough that claiming (one uncontended lock) stays negligible next to a chunk of matmul.
constexpr std::int64_t chunks_per_thread = 4;

/// Start of chunk `c` of `chunks` over [0, n), rounded down to a multiple of 4 rows.
std::int64_t chunk_begin(std::int64_t n, std::int64_t c, std::int64_t chunks) {
  return c >= chunks ? n : (n * c / chunks) & ~std::int64_t{3};
}

/// How long a worker polls for the next job, and the caller for the workers' last chunks,
/// before sleeping (see thread_pool.hpp). A chunk of a decode matmul takes 10-50 us here.
constexpr auto worker_spin = std::chrono::microseconds(200);
constexpr auto caller_spin = std::chrono::microseconds(200);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

/// Polls `done` until it holds or `budget` has passed; true when it holds.
template <class Pred>
bool spin_until(Pred&& done, std::chrono::microseconds budget) {
  const auto until = std::chrono::steady_clock::now() + budget;
  for (int i = 0;; ++i) {
    if (done()) return true;
    cpu_relax();
    if (i % 64 == 63 && std::chrono::steady_clock::now() >= until) return done();
  }
}

} // namespace

thread_pool::thread_pool(int threads) {
  if (threads < 1 || threads > 256)
    throw engine_error(engine_errc::invalid_argument,
                       "thread_pool: threads is " + std::to_string(threads) + ", expected 1..256");
  workers_.reserve(static_cast<std::size_t>(threads - 1));
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { worker_main(i); });
}

thread_pool::~thread_pool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void thread_pool::run(std::int64_t n, task_fn fn, void* ctx) {
  std::unique_lock<std::mutex> lock(mutex_);
  fn_ = fn;
  ctx_ = ctx;
  n_ = n;
  chunks_ = std::min<std::int64_t>(n, chunks_per_thread * threads());
  next_ = 0;
  open_ = true;
  ++generation_;
  lock.unlock();
  wake_.notify_all();
  lock.lock();
  run_chunks(lock, 0);
  // Every chunk is claimed: late workers must not start, running ones must finish (ctx lives
  // on the caller's stack).
  open_ = false;
  if (active_.load() == 0) return;
  lock.unlock();
  const bool finished = spin_until([this] { return active_.load() == 0; }, caller_spin);
  lock.lock();
  if (!finished) done_.wait(lock, [this] { return active_.load() == 0; });
}

void thread_pool::run_chunks(std::unique_lock<std::mutex>& lock, int worker) {
  while (next_ < chunks_) {
    std::int64_t c = next_++;
    std::int64_t b = chunk_begin(n_, c, chunks_), e = chunk_begin(n_, c + 1, chunks_);
    task_fn fn = fn_;
    void* ctx = ctx_;
    lock.unlock();
    if (b < e) fn(ctx, b, e, worker);
    lock.lock();
  }
}

void thread_pool::worker_main(int index) {
  std::uint64_t seen = 0;
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    if (!stop_ && generation_.load() == seen) {
      lock.unlock();
      spin_until([&] { return stop_.load() || generation_.load() != seen; }, worker_spin);
      lock.lock();
    }
    wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
    if (stop_) return;
    seen = generation_;
    if (!open_) continue;
    ++active_;
    run_chunks(lock, index);
    if (--active_ == 0) done_.notify_one();
  }
}

} // namespace duet::engine
