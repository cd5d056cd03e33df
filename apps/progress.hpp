#pragma once

// Progress of long steps (loading a model, starting a cluster, a benchmark's iterations): a bar
// redrawn in place on a terminal, plain "progress:" lines otherwise (logs, CI, pipes), so the
// same code reads well in both places.

#include <chrono>
#include <cstdio>
#include <string>
#include <string_view>

namespace duet::apps {

class progress {
public:
  /// Writes to `out`; `terminal` chooses the redrawn bar (pass isatty(fileno(out))).
  progress(std::FILE* out, bool terminal, std::string title);
  /// A progress on stderr, a bar when stderr is a terminal.
  explicit progress(std::string title);
  ~progress();
  progress(const progress&) = delete;
  progress& operator=(const progress&) = delete;

  /// Reports `fraction` (0..1) done, at step `what`. Plain output prints a line only when the
  /// step changes or another 10% are done, so logs stay short.
  void update(double fraction, std::string_view what);

  /// Ends the bar with a final line `message` and the elapsed time.
  void finish(std::string_view message);

private:
  std::FILE* out_;
  bool terminal_;
  std::string title_;
  std::string last_step_;
  int last_decile_ = -1;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

} // namespace duet::apps
