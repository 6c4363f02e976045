// partition_workers: a few threads that work through items posted for partitions, each thread
// owning the partitions p with p % threads == its index, so one partition's items are worked by
// one thread in the order they were posted. The keyed collector merges shuffled pieces with them
// while the run goes on (keyed_partial.hpp): each partition's table has one writer, and the
// partitions are merged in parallel instead of one after another in the caller's thread.
//
// Bounded: post() waits while the owning thread has more than `max_queued` weight (entries)
// waiting, so a caller that drains rings faster than the merges go holds the replicas back
// through their rings, as a merge in the caller's thread did. The first exception a work call
// throws stops the workers; post() and join() rethrow it. The destructor stops and joins them
// (queued items are dropped).
//
// Each thread has a State of its own, made for it by make_state(thread index) before it starts
// and handed to every work call on that thread (the collector's copy of the user's merge, which
// may keep state).
//
// Replicas may be forked from this process while these threads work (pf::restart, pf::recycle):
// the children run only replica code, never the collector, and glibc's malloc takes its arena
// locks around fork(). Checked under GCC 12's ASan too, whose allocator has no fork handlers:
// aggregation_switch_test's recycled case, run with 2 M items and a fork every 1 000, forked
// ~2 000 replacements across busy merge threads without a hang.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace procflow::detail {

template <class Item, class State>
class partition_workers {
 public:
  using make_state_fn = std::function<State(std::size_t thread)>;
  // work(the thread's state, partition, item): called on the thread that owns the partition.
  using work_fn = std::function<void(State&, std::size_t, Item&)>;

  partition_workers(std::size_t threads, std::size_t max_queued, const make_state_fn& make_state, work_fn work)
      : max_queued_(max_queued), work_(std::move(work)), workers_(std::max<std::size_t>(1, threads)) {
    for (; started_ < workers_.size(); ++started_) {
      try {
        workers_[started_].thread = std::thread([this, t = started_, state = make_state(started_)]() mutable { run(t, state); });
      } catch (...) {
        // Whatever failed (no more threads, no memory, make_state): the threads started own every
        // partition. With none started there is nothing to work with.
        if (started_ == 0) throw;
        break;
      }
    }
  }
  ~partition_workers() { stop(); }
  partition_workers(const partition_workers&) = delete;
  partition_workers& operator=(const partition_workers&) = delete;

  std::size_t threads() const noexcept { return started_; }

  void post(std::size_t partition, Item item, std::size_t weight) {
    worker& w = workers_[partition % started_];
    std::unique_lock lock(w.mutex);
    w.changed.wait(lock, [&] { return w.queued <= max_queued_ || w.failed; });
    if (w.failed) {
      lock.unlock();
      rethrow();
    }
    w.queue.push_back({partition, weight, std::move(item)});
    w.queued += weight;
    w.changed.notify_all();
  }

  // Waits until every posted item was worked, joins the threads, rethrows the first exception.
  void join() {
    set_all(&worker::closing);
    join_all();
    rethrow();
  }

 private:
  struct posted {
    std::size_t partition;
    std::size_t weight;
    Item item;
  };
  struct worker {
    std::mutex mutex;
    std::condition_variable changed;  // an item posted, one worked, closing or failed
    std::deque<posted> queue;
    std::size_t queued = 0;  // weight in `queue`
    bool closing = false;    // work through the queue, then end
    bool stopping = false;   // end now
    bool failed = false;     // a work call threw (on any thread)
    std::thread thread;
  };

  void run(std::size_t t, State& state) {
    worker& w = workers_[t];
    for (;;) {
      std::unique_lock lock(w.mutex);
      w.changed.wait(lock, [&] { return !w.queue.empty() || w.closing || w.stopping || w.failed; });
      if (w.stopping || w.failed || w.queue.empty()) return;
      posted p = std::move(w.queue.front());
      w.queue.pop_front();
      lock.unlock();
      try {
        work_(state, p.partition, p.item);
      } catch (...) {
        fail(std::current_exception());
        return;
      }
      const std::size_t weight = p.weight;
      p = {};  // the item's memory goes back here, not under the lock
      lock.lock();
      w.queued -= weight;
      w.changed.notify_all();
    }
  }

  void fail(std::exception_ptr e) {
    {
      std::lock_guard lock(error_mutex_);
      if (!error_) error_ = std::move(e);
    }
    set_all(&worker::failed);
  }

  // Sets `flag` on every worker and wakes it.
  void set_all(bool worker::*flag) {
    for (auto& w : workers_) {
      std::lock_guard lock(w.mutex);
      w.*flag = true;
      w.changed.notify_all();
    }
  }
  void join_all() noexcept {
    for (auto& w : workers_)
      if (w.thread.joinable()) w.thread.join();
  }

  void rethrow() {
    std::lock_guard lock(error_mutex_);
    if (error_) std::rethrow_exception(error_);
  }

  void stop() noexcept {
    set_all(&worker::stopping);
    join_all();
  }

  std::size_t max_queued_;
  work_fn work_;
  std::vector<worker> workers_;  // never resized: a worker holds a mutex
  std::size_t started_ = 0;
  std::mutex error_mutex_;
  std::exception_ptr error_;
};

}  // namespace procflow::detail
