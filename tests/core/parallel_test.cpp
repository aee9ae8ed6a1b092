// parallel.hpp and progress.hpp: coverage, chunking, exceptions, nesting and determinism of parallel_for;
// the events of ProgressReporter.
#include "lowbit/core/parallel.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "lowbit/core/error.hpp"
#include "lowbit/core/progress.hpp"

namespace lowbit {
namespace {

// Restores the thread count a test changed, so test order does not matter.
class ThreadCountGuard {
 public:
  ThreadCountGuard() : saved_(num_threads()) {}
  ~ThreadCountGuard() { set_num_threads(saved_); }

 private:
  int saved_;
};

using Chunks = std::vector<std::pair<std::int64_t, std::int64_t>>;

// Runs parallel_for and returns its chunks sorted by begin, each also checked for a sane range.
Chunks run_chunks(std::int64_t n, std::int64_t grain) {
  std::mutex mutex;
  Chunks chunks;
  parallel_for(n, grain, [&](std::int64_t begin, std::int64_t end) {
    std::lock_guard lock(mutex);
    chunks.emplace_back(begin, end);
  });
  std::sort(chunks.begin(), chunks.end());
  return chunks;
}

TEST(ParallelFor, CoversTheRangeExactlyOnceInChunksOfAtLeastGrain) {
  ThreadCountGuard guard;
  const std::int64_t sizes[] = {0, 1, 2, 3, 7, 8, 9, 31, 64, 100, 1000, 4097, 100003};
  const std::int64_t grains[] = {0, 1, 2, 3, 4, 5, 16, 100, 1000, 200000};
  for (int threads = 1; threads <= 8; ++threads) {
    set_num_threads(threads);
    ASSERT_EQ(num_threads(), threads);
    for (const std::int64_t n : sizes) {
      for (const std::int64_t grain : grains) {
        SCOPED_TRACE(fmt::format("threads {}, n {}, grain {}", threads, n, grain));
        std::vector<std::atomic<int>> hits(static_cast<std::size_t>(n));
        std::mutex mutex;
        Chunks chunks;
        parallel_for(n, grain, [&](std::int64_t begin, std::int64_t end) {
          for (std::int64_t i = begin; i < end; ++i) hits[static_cast<std::size_t>(i)].fetch_add(1);
          std::lock_guard lock(mutex);
          chunks.emplace_back(begin, end);
        });
        for (std::int64_t i = 0; i < n; ++i) {
          ASSERT_EQ(hits[static_cast<std::size_t>(i)].load(), 1) << "index " << i;
        }
        if (n == 0) {
          EXPECT_TRUE(chunks.empty());  // nothing to do: fn is not called
          continue;
        }
        std::sort(chunks.begin(), chunks.end());
        // Disjoint, in order, non-empty, covering [0, n).
        EXPECT_EQ(chunks.front().first, 0);
        EXPECT_EQ(chunks.back().second, n);
        std::string short_chunks;  // parallel.hpp: "each at least `grain` long (but the last)"
        for (std::size_t c = 0; c < chunks.size(); ++c) {
          EXPECT_LT(chunks[c].first, chunks[c].second);
          if (c + 1 < chunks.size()) {
            EXPECT_EQ(chunks[c].second, chunks[c + 1].first);
            if (chunks[c].second - chunks[c].first < grain) {
              short_chunks += fmt::format(" [{}, {})", chunks[c].first, chunks[c].second);
            }
          }
        }
        EXPECT_TRUE(short_chunks.empty()) << chunks.size() << " chunks; shorter than grain " << grain
                                          << " before the last:" << short_chunks;
        if (grain >= n) {
          EXPECT_EQ(chunks.size(), 1u);  // the first chunk must be at least n long
        }
      }
    }
  }
}

TEST(ParallelFor, UsesSeveralThreadsWhenAsked) {
  ThreadCountGuard guard;
  set_num_threads(4);
  std::mutex mutex;
  std::set<std::thread::id> ids;
  std::atomic<int> waiting{0};
  // Each chunk waits (bounded) until a second one has started, so with 4 threads at least two run at once.
  parallel_for(4, 1, [&](std::int64_t, std::int64_t) {
    {
      std::lock_guard lock(mutex);
      ids.insert(std::this_thread::get_id());
    }
    waiting.fetch_add(1);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (waiting.load() < 2 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  });
  EXPECT_GE(ids.size(), 2u);
  EXPECT_GE(waiting.load(), 2);
}

TEST(ParallelFor, ChunkingIsTheSameEveryRun) {
  ThreadCountGuard guard;
  for (const int threads : {2, 3, 8}) {
    set_num_threads(threads);
    for (const auto& [n, grain] : {std::pair<std::int64_t, std::int64_t>{1000, 7}, {100003, 64}, {50, 1}, {9, 4}}) {
      SCOPED_TRACE(fmt::format("threads {}, n {}, grain {}", threads, n, grain));
      const Chunks first = run_chunks(n, grain);
      for (int run = 0; run < 5; ++run) EXPECT_EQ(run_chunks(n, grain), first);
      // A per-chunk reduction in floating point is therefore reproducible bit for bit.
      auto reduce = [&] {
        std::vector<double> partial(first.size());
        parallel_for(n, grain, [&](std::int64_t begin, std::int64_t end) {
          double s = 0;
          for (std::int64_t i = begin; i < end; ++i) s += 1.0 / static_cast<double>(i + 1);
          const auto c = static_cast<std::size_t>(
              std::lower_bound(first.begin(), first.end(), std::make_pair(begin, end)) - first.begin());
          partial[c] = s;
        });
        double total = 0;
        for (const double p : partial) total += p;
        return total;
      };
      const double r0 = reduce();
      EXPECT_EQ(reduce(), r0);
    }
  }
}

TEST(ParallelFor, ExceptionFromOneChunkPropagatesWithItsCode) {
  ThreadCountGuard guard;
  for (const int threads : {1, 2, 4, 8}) {
    set_num_threads(threads);
    SCOPED_TRACE(fmt::format("threads {}", threads));
    std::atomic<int> calls{0};
    try {
      parallel_for(1000, 10, [&](std::int64_t begin, std::int64_t end) {
        calls.fetch_add(1);
        if (begin <= 500 && 500 < end) {
          LOWBIT_THROW(ErrorCode::Numerical, "chunk [{}, {}): element 500 is NaN", begin, end);
        }
      });
      FAIL() << "no exception";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::Numerical);
      EXPECT_NE(std::string(e.what()).find("element 500 is NaN"), std::string::npos) << e.what();
    }
    EXPECT_GE(calls.load(), 1);

    // A standard exception comes through as itself too.
    EXPECT_THROW(parallel_for(100, 1, [](std::int64_t begin, std::int64_t) {
                   if (begin == 0) throw std::out_of_range("first chunk");
                 }),
                 std::out_of_range);

    // The pool still works, with every index covered once.
    std::vector<std::atomic<int>> hits(5000);
    parallel_for(5000, 3, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t i = begin; i < end; ++i) hits[static_cast<std::size_t>(i)].fetch_add(1);
    });
    EXPECT_TRUE(std::all_of(hits.begin(), hits.end(), [](const std::atomic<int>& h) { return h.load() == 1; }));
  }
}

TEST(ParallelFor, EveryChunkThrowingStillGivesOneError) {
  ThreadCountGuard guard;
  set_num_threads(8);
  for (int run = 0; run < 50; ++run) {
    try {
      parallel_for(64, 1, [](std::int64_t begin, std::int64_t) {
        LOWBIT_THROW(ErrorCode::Corrupt, "chunk at {}", begin);
      });
      FAIL() << "no exception";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::Corrupt);
    }
  }
}

TEST(ParallelFor, NestedParallelForRunsSeriallyInsideAChunk) {
  ThreadCountGuard guard;
  set_num_threads(4);
  constexpr std::int64_t kOuter = 16, kInner = 1000;
  std::vector<std::atomic<int>> hits(kOuter * kInner);
  std::atomic<int> inner_calls{0};
  std::atomic<bool> inner_on_other_thread{false};
  parallel_for(kOuter, 1, [&](std::int64_t ob, std::int64_t oe) {
    for (std::int64_t o = ob; o < oe; ++o) {
      const auto outer_thread = std::this_thread::get_id();
      parallel_for(kInner, 1, [&](std::int64_t ib, std::int64_t ie) {
        inner_calls.fetch_add(1);
        if (std::this_thread::get_id() != outer_thread) inner_on_other_thread = true;
        for (std::int64_t i = ib; i < ie; ++i) hits[static_cast<std::size_t>(o * kInner + i)].fetch_add(1);
      });
    }
  });
  EXPECT_TRUE(std::all_of(hits.begin(), hits.end(), [](const std::atomic<int>& h) { return h.load() == 1; }));
  EXPECT_GE(inner_calls.load(), kOuter);
  EXPECT_FALSE(inner_on_other_thread.load());
  // An exception from a nested loop propagates out of both.
  EXPECT_THROW(parallel_for(8, 1,
                            [](std::int64_t, std::int64_t) {
                              parallel_for(8, 1, [](std::int64_t b, std::int64_t) {
                                if (b == 0) LOWBIT_THROW(ErrorCode::Unsupported, "inner");
                              });
                            }),
               Error);
  // And the pool is usable after it.
  EXPECT_EQ(run_chunks(100, 10).back().second, 100);
}

TEST(ParallelFor, CallsFromSeveralOutsideThreadsAllComplete) {
  ThreadCountGuard guard;
  set_num_threads(4);
  std::atomic<std::int64_t> total{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 4; ++t) {
    callers.emplace_back([&] {
      for (int r = 0; r < 20; ++r) {
        parallel_for(1000, 8, [&](std::int64_t b, std::int64_t e) { total.fetch_add(e - b); });
      }
    });
  }
  for (auto& c : callers) c.join();
  EXPECT_EQ(total.load(), 4 * 20 * 1000);
}

TEST(ParallelFor, ThreadCountChangesTakeEffect) {
  ThreadCountGuard guard;
  for (const int threads : {1, 8, 2, 5, 1, 3}) {
    set_num_threads(threads);
    EXPECT_EQ(num_threads(), threads);
    // The pool grows and shrinks: never more distinct threads than asked for (the caller included).
    std::mutex mutex;
    std::set<std::thread::id> ids;
    std::atomic<std::int64_t> covered{0};
    parallel_for(100000, 1, [&](std::int64_t b, std::int64_t e) {
      covered.fetch_add(e - b);
      std::lock_guard lock(mutex);
      ids.insert(std::this_thread::get_id());
    });
    EXPECT_EQ(covered.load(), 100000);
    EXPECT_LE(ids.size(), static_cast<std::size_t>(threads));
    if (threads == 1) {
      EXPECT_EQ(*ids.begin(), std::this_thread::get_id());
    }
  }
  EXPECT_THROW(set_num_threads(0), Error);
  EXPECT_THROW(set_num_threads(-2), Error);
  EXPECT_GE(num_threads(), 1);
}

TEST(ParallelFor, NegativeCountThrowsInvalidArgument) {
  try {
    parallel_for(-1, 1, [](std::int64_t, std::int64_t) {});
    FAIL() << "no exception";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("-1"), std::string::npos) << e.what();
  }
}

// ---- ProgressReporter ---------------------------------------------------------------------------------------

TEST(ProgressReporter, EventsCountUpWithElapsedAndEta) {
  std::vector<ProgressEvent> events;
  std::vector<std::string> items;  // the event's string_views live only during the call
  std::vector<std::string> stages;
  ProgressReporter progress(
      [&](const ProgressEvent& e) {
        events.push_back(e);
        items.emplace_back(e.item);
        stages.emplace_back(e.stage);
      },
      "quantize", 4);
  progress.advance(1, "model.layers.0");
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  progress.advance(2, "model.layers.1-2");
  progress.advance();
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].done, 1);
  EXPECT_EQ(events[1].done, 3);
  EXPECT_EQ(events[2].done, 4);
  for (std::size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(stages[i], "quantize");
    EXPECT_EQ(events[i].total, 4);
    EXPECT_GE(events[i].elapsed_seconds, 0.0);
    if (i > 0) {
      EXPECT_GE(events[i].elapsed_seconds, events[i - 1].elapsed_seconds);
    }
  }
  EXPECT_EQ(items[0], "model.layers.0");
  EXPECT_EQ(items[1], "model.layers.1-2");
  EXPECT_EQ(items[2], "");
  EXPECT_GE(events[1].elapsed_seconds, 0.004);
  // eta = elapsed * (total - done) / done: known as soon as one unit is done, 0 at the end.
  EXPECT_GE(events[0].eta_seconds, 0.0);
  EXPECT_NEAR(events[1].eta_seconds, events[1].elapsed_seconds * 1.0 / 3.0, 1e-12);
  EXPECT_EQ(events[2].eta_seconds, 0.0);
}

TEST(ProgressReporter, UnknownTotalGivesNoEta) {
  std::vector<ProgressEvent> events;
  ProgressReporter progress([&](const ProgressEvent& e) { events.push_back(e); }, "perplexity", 0);
  progress.advance(10);
  progress.advance(10);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[1].done, 20);
  EXPECT_EQ(events[1].total, 0);
  EXPECT_EQ(events[1].eta_seconds, -1.0);
}

TEST(ProgressReporter, NoCallbackIsFine) {
  ProgressReporter progress(nullptr, "quantize", 3);
  EXPECT_NO_THROW(progress.advance());
  EXPECT_NO_THROW(progress.advance(2, "x"));
  ProgressReporter empty_function(ProgressCallback{}, "quantize", 3);
  EXPECT_NO_THROW(empty_function.advance());
}

TEST(ProgressReporter, ThreadSafeUnderParallelFor) {
  ThreadCountGuard guard;
  set_num_threads(8);
  constexpr std::int64_t kUnits = 5000;
  std::vector<std::int64_t> seen;  // guarded by the reporter's lock: the callback runs one at a time
  std::atomic<int> inside{0};
  std::atomic<bool> overlapped{false};
  ProgressReporter progress(
      [&](const ProgressEvent& e) {
        if (inside.fetch_add(1) != 0) overlapped = true;
        seen.push_back(e.done);
        inside.fetch_sub(1);
      },
      "quantize", kUnits);
  parallel_for(kUnits, 1, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) progress.advance();
  });
  EXPECT_FALSE(overlapped.load());
  ASSERT_EQ(seen.size(), static_cast<std::size_t>(kUnits));
  for (std::size_t i = 0; i < seen.size(); ++i) ASSERT_EQ(seen[i], static_cast<std::int64_t>(i) + 1);
}

}  // namespace
}  // namespace lowbit
