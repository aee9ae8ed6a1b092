// CPU parallelism: one process-wide pool of worker threads and a parallel-for over index ranges.
//
// Why our own pool and not OpenMP: lowbit's work items throw lowbit::Error, and an exception may not
// leave an OpenMP region; an engine that links us keeps its own OpenMP runtime (libgomp or libomp)
// without a second one arriving with us; and the chunking below is fixed by (n, grain, threads), so a
// reduction written per chunk is deterministic run to run.
#pragma once

#include <cstdint>
#include <functional>

namespace lowbit {

// Threads parallel_for uses: set_num_threads() if called, else the LOWBIT_NUM_THREADS environment
// variable, else std::thread::hardware_concurrency().
int num_threads();
// n >= 1. Takes effect for the next parallel_for; the pool grows or shrinks to match.
void set_num_threads(int n);

// Calls fn(begin, end) on disjoint chunks that cover [0, n), each at least `grain` long (but the last),
// spread over the pool; the calling thread works too. Returns when all chunks are done. If any call
// throws, the remaining chunks are skipped and the exception of the lowest-indexed failing chunk is
// rethrown. A parallel_for inside a chunk runs serially on that thread.
void parallel_for(std::int64_t n, std::int64_t grain, const std::function<void(std::int64_t, std::int64_t)>& fn);

}  // namespace lowbit
