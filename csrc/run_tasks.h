// run_tasks: the dynamic task schedule the C++ ops share (csrc/pyscorepen.cpp, transpose.h).
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace pyscorepen {

// Runs fn(task) for task in [0, n_tasks) on the torch threads, pulling tasks from a shared
// counter (dynamic schedule, see for_each_chunk in csrc/pyscorepen.cpp). Each task writes its own
// outputs: the result does not depend on the schedule. Serial inside a parallel region or on one
// thread.
template <class Fn>
void run_tasks(int64_t n_tasks, Fn fn) {
  if (n_tasks <= 0) return;
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  const int64_t workers = std::min(threads, n_tasks);
  if (workers <= 1) {
    for (int64_t task = 0; task < n_tasks; ++task) fn(task);
    return;
  }
  std::atomic<int64_t> next_task{0};
  at::parallel_for(0, workers, 1, [&](int64_t worker_begin, int64_t worker_end) {
    for (int64_t worker = worker_begin; worker < worker_end; ++worker)
      for (int64_t task = next_task++; task < n_tasks; task = next_task++) fn(task);
  });
}

}  // namespace pyscorepen
