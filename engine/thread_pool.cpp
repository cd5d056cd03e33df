#include "engine/thread_pool.hpp"

#include "engine/error.hpp"

namespace duet::engine {

namespace {

std::int64_t split(std::int64_t n, int part, int parts) {
  return n * part / parts;
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
  int parts = threads();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    fn_ = fn;
    ctx_ = ctx;
    n_ = n;
    pending_ = parts - 1;
    ++generation_;
  }
  wake_.notify_all();
  fn(ctx, 0, split(n, 1, parts), 0);
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [this] { return pending_ == 0; });
}

void thread_pool::worker_main(int index) {
  std::uint64_t seen = 0;
  for (;;) {
    task_fn fn;
    void* ctx;
    std::int64_t n;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      fn = fn_;
      ctx = ctx_;
      n = n_;
    }
    int parts = threads();
    std::int64_t b = split(n, index, parts), e = split(n, index + 1, parts);
    if (b < e) fn(ctx, b, e, index);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) done_.notify_one();
    }
  }
}

} // namespace duet::engine
