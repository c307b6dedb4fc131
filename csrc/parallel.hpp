// One small helper for the coder's parallel parts: a few tasks of similar
// size, each on its own std::thread, errors kept until all have finished.
#pragma once

#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

namespace nnc {

// Run work(0), ..., work(count - 1): task 0 on the calling thread and every
// other task on a thread of its own when `parallel`, else all in order on
// the calling thread. Returns after every started task has finished, then
// rethrows the error of the lowest-numbered task that failed.
template <class Work>
void run_tasks(int64_t count, bool parallel, Work&& work) {
  std::vector<std::exception_ptr> errors(size_t(count > 0 ? count : 0));
  const auto run = [&](int64_t task) {
    try {
      work(task);
    } catch (...) {
      errors[size_t(task)] = std::current_exception();
    }
  };

  std::vector<std::thread> threads;
  if (parallel && count > 1) {
    threads.reserve(size_t(count - 1));
    try {
      for (int64_t task = 1; task < count; ++task) threads.emplace_back(run, task);
    } catch (...) {
      for (auto& thread : threads) thread.join();
      throw;  // no thread to run on (std::system_error)
    }
    run(0);
    for (auto& thread : threads) thread.join();
  } else {
    for (int64_t task = 0; task < count; ++task) run(task);
  }

  for (const auto& error : errors) {
    if (error) std::rethrow_exception(error);
  }
}

}  // namespace nnc
