// Progress of long operations. Library code never prints; it reports through a callback the caller may
// pass, and the CLI turns the reports into a status line (layers done, time left).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>

namespace lowbit {

struct ProgressEvent {
  std::string_view stage;      // "quantize", "perplexity", ...
  std::string_view item;       // what was just finished: a tensor or layer name; may be empty
  std::int64_t done = 0;       // units finished so far
  std::int64_t total = 0;      // units in all (0 when unknown)
  double elapsed_seconds = 0;  // since the operation started
  double eta_seconds = -1;     // estimated time left from the rate so far; -1 when unknown
};

using ProgressCallback = std::function<void(const ProgressEvent&)>;

// Counts units of one operation and forwards each step to a callback (if any). Safe to call from
// worker threads: the callback runs under a lock, one event at a time, with `done` increasing.
class ProgressReporter {
 public:
  ProgressReporter(ProgressCallback callback, std::string stage, std::int64_t total)
      : callback_(std::move(callback)), stage_(std::move(stage)), total_(total),
        start_(std::chrono::steady_clock::now()) {}

  void advance(std::int64_t units = 1, std::string_view item = {}) {
    if (!callback_) return;
    std::lock_guard lock(mutex_);
    done_ += units;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    double eta = -1;
    if (total_ > 0 && done_ > 0) eta = elapsed * static_cast<double>(total_ - done_) / static_cast<double>(done_);
    callback_(ProgressEvent{stage_, item, done_, total_, elapsed, eta});
  }

 private:
  ProgressCallback callback_;
  std::string stage_;
  std::int64_t total_;
  std::int64_t done_ = 0;
  std::chrono::steady_clock::time_point start_;
  std::mutex mutex_;
};

}  // namespace lowbit
