// The answers of one pool.submit_all(items) (pool.hpp): one shared state for the whole job
// instead of a std::future per item.
//
//   pf::job_future<Reply> job = pool.submit_all(requests);
//   Reply first = job.get(0);             // waits for item 0 only; its value, or its stage_error
//   std::vector<Reply> all = job.get();   // every value in order, or the first failed item's error
//
// | call        | blocks | what it does                                                         |
// |-------------|--------|----------------------------------------------------------------------|
// | get(i)      | yes    | item i's value (moved out: once per item), or throws its error       |
// | get()       | yes    | every item's value in order; throws the error of the first failed one |
// | wait()      | yes    | until every item is answered                                         |
// | ready()     | no     | every item is answered                                               |
// | size()      | no     | items in the job                                                     |
//
// Why not a std::future per item: setting a std::promise costs a futex syscall (libstdc++'s
// call_once), so a 100-item job paid 100 of them on the pool's results thread; here the results
// thread stores a whole result batch under one lock and wakes the caller once per batch. Items
// fail one by one as futures would: a throwing item fails only its own get(i).
#pragma once

#include <procflow/error.hpp>

#include <condition_variable>
#include <cstddef>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace procflow {

namespace detail {

// Shared by a job_future and the pool that answers it. The pool's side (set_*) runs under
// lock() and calls notify() once the lock is released; the caller's side locks by itself.
template <class T>
class job_state {
 public:
  explicit job_state(std::size_t items) : answers_(items), unanswered_(items) {}

  std::size_t size() const noexcept { return answers_.size(); }

  // --- pool side ---------------------------------------------------------------------------
  std::unique_lock<std::mutex> lock() { return std::unique_lock(mutex_); }
  // Under lock(): item i has its value or error already.
  bool answered(std::size_t i) const noexcept { return answers_[i].done; }
  // Under lock(): false (and nothing changes) when item i was answered before.
  bool set_value(std::size_t i, T&& value) {
    answer& a = answers_[i];
    if (a.done) return false;
    a.value.emplace(std::move(value));
    a.done = true;
    --unanswered_;
    return true;
  }
  bool set_error(std::size_t i, std::exception_ptr error) noexcept {
    answer& a = answers_[i];
    if (a.done) return false;
    a.error = std::move(error);
    a.done = true;
    --unanswered_;
    return true;
  }
  // After releasing lock(): wakes a caller waiting in take() or wait(). glibc's broadcast makes
  // no syscall when nobody waits.
  void notify() noexcept { changed_.notify_all(); }

  // --- caller side -------------------------------------------------------------------------
  T take(std::size_t i) {
    if (i >= answers_.size())
      throw std::out_of_range("procflow: job_future::get(" + std::to_string(i) + "): the job has " + std::to_string(answers_.size()) +
                              " items");
    std::unique_lock guard(mutex_);
    answer& a = answers_[i];
    changed_.wait(guard, [&] { return a.done; });
    if (a.taken) throw procflow::error("procflow: job_future::get(" + std::to_string(i) + "): that item was taken already");
    a.taken = true;
    if (a.error) std::rethrow_exception(a.error);
    return std::move(*a.value);
  }
  void wait() {
    std::unique_lock guard(mutex_);
    changed_.wait(guard, [&] { return unanswered_ == 0; });
  }
  bool ready() {
    std::lock_guard guard(mutex_);
    return unanswered_ == 0;
  }

 private:
  struct answer {
    std::optional<T> value;
    std::exception_ptr error;
    bool done = false;   // value or error set
    bool taken = false;  // get(i) returned it (or threw it)
  };

  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<answer> answers_;
  std::size_t unanswered_;
};

}  // namespace detail

template <class T>
class job_future {
 public:
  job_future() = default;  // no job: valid() is false
  explicit job_future(std::shared_ptr<detail::job_state<T>> state) : state_(std::move(state)) {}

  bool valid() const noexcept { return state_ != nullptr; }
  std::size_t size() const noexcept { return state_ ? state_->size() : 0; }

  // Item i's value, once it is answered; throws its error (a stage_error, or the pool's failure).
  // Once per item, like std::future::get().
  T get(std::size_t i) { return checked().take(i); }

  // Every item's value in job order, once all are answered; throws the error of the first item
  // (in job order) that failed. Takes every item up to that one (as get(i) would).
  std::vector<T> get() {
    auto& s = checked();
    s.wait();
    std::vector<T> values;
    values.reserve(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) values.push_back(s.take(i));
    return values;
  }

  void wait() const { checked().wait(); }
  bool ready() const { return checked().ready(); }

 private:
  detail::job_state<T>& checked() const {
    if (!state_) throw procflow::error("procflow: job_future: no job (default-constructed or moved from)");
    return *state_;
  }

  std::shared_ptr<detail::job_state<T>> state_;
};

}  // namespace procflow
