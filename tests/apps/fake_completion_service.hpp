#pragma once

// TEST DOUBLE, for protocol-shape unit tests of the gateway only (JSON and SSE shapes, error
// mapping, admission, cancellation wiring). It emits a scripted token list; it runs no model.
// The end-to-end tests (serve_end_to_end.cpp) use the real embedded cluster through `duet serve`.

#include "actors/completion_service.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace duet::test {

class fake_completion_service : public actors::completion_service {
public:
  // -- script (set before requests) ------------------------------------------------------------
  std::vector<int> script; ///< tokens every request yields, in order (then `end_reason`)
  actors::finish_reason end_reason = actors::finish_reason::length;
  actors::service_error fail_with = actors::service_error::none; ///< ends at once with it
  bool hold_until_cancelled = false; ///< after the script, wait for cancel() before ending
  bool is_ready = true;
  int context = 64;

  ~fake_completion_service() override {
    std::vector<std::thread> threads;
    {
      std::lock_guard lock{mu_};
      shutting_down_ = true;
      threads.swap(threads_);
    }
    cv_.notify_all();
    for (auto& t : threads) t.join();
  }

  void submit(actors::completion_request request, actors::completion_callbacks cb) override {
    std::lock_guard lock{mu_};
    requests.push_back(request);
    threads_.emplace_back([this, request = std::move(request), cb = std::move(cb)] {
      actors::completion_result result;
      result.prompt_tokens = static_cast<int>(request.prompt_tokens.size());
      if (fail_with != actors::service_error::none) {
        result.reason = actors::finish_reason::error;
        result.error = fail_with;
        result.error_message = "scripted failure";
        cb.on_done(result);
        return;
      }
      int n = 0;
      for (int token : script) {
        if (n == request.max_tokens || is_cancelled(request.request_id)) break;
        cb.on_token(result.prompt_tokens + n, token);
        ++n;
      }
      result.completion_tokens = n;
      result.reason = n == request.max_tokens ? actors::finish_reason::length : end_reason;
      if (hold_until_cancelled) {
        std::unique_lock lock{mu_};
        cv_.wait(lock, [&] { return shutting_down_ || cancelled_.count(request.request_id); });
      }
      if (is_cancelled(request.request_id)) result.reason = actors::finish_reason::cancelled;
      cb.on_done(result);
    });
  }

  void cancel(const std::string& request_id) override {
    {
      std::lock_guard lock{mu_};
      cancelled_.insert(request_id);
    }
    cv_.notify_all();
  }

  bool ready() const override { return is_ready; }
  int context_length() const override { return context; }

  bool is_cancelled(const std::string& id) {
    std::lock_guard lock{mu_};
    return cancelled_.count(id) > 0;
  }
  std::size_t cancelled_count() {
    std::lock_guard lock{mu_};
    return cancelled_.size();
  }

  std::vector<actors::completion_request> requests; ///< as submitted (guarded by mu_ on write)

private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::set<std::string> cancelled_;
  std::vector<std::thread> threads_;
  bool shutting_down_ = false;
};

} // namespace duet::test
