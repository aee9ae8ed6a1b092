#include "lowbit/core/parallel.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "lowbit/core/error.hpp"

namespace lowbit {
namespace {

int default_threads() {
  if (const char* env = std::getenv("LOWBIT_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n >= 1) return n;
  }
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

thread_local bool t_inside_parallel = false;

// One job at a time: chunks are claimed from an atomic counter by the workers and the caller.
class Pool {
 public:
  static Pool& instance() {
    static Pool pool;
    return pool;
  }

  int threads() {
    std::lock_guard lock(config_mutex_);
    return threads_;
  }

  void set_threads(int n) {
    std::lock_guard run_lock(run_mutex_);
    std::lock_guard lock(config_mutex_);
    threads_ = n;
    stop_workers();
  }

  void run(std::int64_t chunks, const std::function<void(std::int64_t)>& body) {
    std::lock_guard run_lock(run_mutex_);  // parallel_for from two outside threads: one after the other
    const int helpers = static_cast<int>(std::min<std::int64_t>(threads() - 1, chunks - 1));
    ensure_workers(helpers);
    {
      std::lock_guard lock(mutex_);
      body_ = &body;
      chunks_ = chunks;
      next_.store(0);
      pending_ = chunks;
      first_error_chunk_ = chunks;
      error_ = nullptr;
      failed_.store(false);
      ++generation_;
    }
    wake_.notify_all();
    work();
    std::unique_lock lock(mutex_);
    done_.wait(lock, [&] { return pending_ == 0 && active_ == 0; });
    body_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

  ~Pool() {
    std::lock_guard lock(config_mutex_);
    stop_workers();
  }

 private:
  Pool() : threads_(default_threads()) {}

  void ensure_workers(int count) {
    while (static_cast<int>(workers_.size()) < count) {
      workers_.emplace_back([this] { worker_loop(); });
    }
  }

  void stop_workers() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
    std::lock_guard lock(mutex_);
    stopping_ = false;
  }

  void worker_loop() {
    t_inside_parallel = true;
    std::uint64_t seen = 0;
    {
      std::lock_guard lock(mutex_);
      seen = generation_;  // a worker born during a job joins that job's next generation only
      if (body_ != nullptr) seen = generation_ - 1;
    }
    for (;;) {
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
        if (body_ == nullptr) continue;  // woken for a job that has already finished
        ++active_;
      }
      work();
      {
        std::lock_guard lock(mutex_);
        --active_;
      }
      done_.notify_all();
    }
  }

  // Claims chunks until none are left; records the lowest failing chunk's exception.
  void work() {
    const bool was_inside = t_inside_parallel;
    t_inside_parallel = true;
    for (;;) {
      const std::int64_t chunk = next_.fetch_add(1);
      if (chunk >= chunks_) break;
      if (!failed_.load(std::memory_order_relaxed)) {
        try {
          (*body_)(chunk);
        } catch (...) {
          std::lock_guard lock(mutex_);
          failed_.store(true);
          if (chunk < first_error_chunk_) {
            first_error_chunk_ = chunk;
            error_ = std::current_exception();
          }
        }
      }
      std::lock_guard lock(mutex_);
      if (--pending_ == 0) done_.notify_all();
    }
    t_inside_parallel = was_inside;
  }

  std::mutex run_mutex_;     // one job at a time
  std::mutex config_mutex_;  // threads_
  int threads_;

  std::mutex mutex_;  // everything below
  std::condition_variable wake_;
  std::condition_variable done_;
  std::vector<std::thread> workers_;
  bool stopping_ = false;
  std::uint64_t generation_ = 0;
  const std::function<void(std::int64_t)>* body_ = nullptr;
  std::int64_t chunks_ = 0;
  std::atomic<std::int64_t> next_{0};
  std::int64_t pending_ = 0;
  int active_ = 0;
  std::int64_t first_error_chunk_ = 0;
  std::exception_ptr error_;
  std::atomic<bool> failed_{false};
};

}  // namespace

int num_threads() { return Pool::instance().threads(); }

void set_num_threads(int n) {
  LOWBIT_CHECK(n >= 1, ErrorCode::InvalidArgument, "set_num_threads: n = {}, must be >= 1", n);
  Pool::instance().set_threads(n);
}

void parallel_for(std::int64_t n, std::int64_t grain, const std::function<void(std::int64_t, std::int64_t)>& fn) {
  LOWBIT_CHECK(n >= 0, ErrorCode::InvalidArgument, "parallel_for: n = {} is negative", n);
  if (n == 0) return;
  grain = std::max<std::int64_t>(grain, 1);
  const int threads = num_threads();
  if (t_inside_parallel || threads == 1 || n <= grain) {
    fn(0, n);
    return;
  }
  // Chunks: about 4 per thread for balance, never shorter than grain. Fixed by (n, grain, threads).
  const std::int64_t max_chunks = (n + grain - 1) / grain;
  const std::int64_t chunks = std::min<std::int64_t>(max_chunks, 4 * static_cast<std::int64_t>(threads));
  const std::int64_t step = std::max(grain, (n + chunks - 1) / chunks);
  const std::int64_t used = (n + step - 1) / step;
  Pool::instance().run(used, [&](std::int64_t c) {
    const std::int64_t begin = c * step;
    fn(begin, std::min(n, begin + step));
  });
}

}  // namespace lowbit
