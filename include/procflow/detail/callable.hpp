// A stage's callable in one replica: built from what the stage was declared with (a copy of the
// callable, or what a pf::per_replica factory returns), finished at end of stream (its finish(),
// whose throw is a "teardown" error), destroyed before the replica's end of stream goes on.
#pragma once

#include <procflow/error.hpp>
#include <procflow/replica.hpp>

#include <exception>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

namespace procflow::detail {

template <class F>
struct callable_of {
  using type = F;
  static constexpr bool factory = false;
};
template <class Factory>
struct callable_of<per_replica_t<Factory>> {
  using type = std::decay_t<std::invoke_result_t<Factory&>>;
  static constexpr bool factory = true;
};

// The callable a stage declared with F runs in each replica.
template <class F>
using callable_t = typename callable_of<F>::type;
template <class F>
inline constexpr bool is_factory_v = callable_of<F>::factory;

// True when the callable can be called through a const reference with an item (holds no state
// it changes): a `mutable` lambda or a functor with a non-const operator() is not.
template <class F, class... Args>
inline constexpr bool const_callable_v = std::is_invocable_v<const F&, Args...>;

// A stage holds state of its own when its callable is not const-callable and is not made per
// replica by a factory: it does not inherit the previous stage's replica count (plan.cpp).
template <class F, class... Args>
inline constexpr bool holds_state_v = !is_factory_v<F> && !const_callable_v<F, Args...>;

// Builds this replica's callable. A copyable callable is copied (every replica and run starts
// from the declared one); a move-only one is moved out of this process's copy of the stage (a
// replica process instantiates each stage once); a factory is called.
template <class F>
callable_t<F> make_callable(F& declared) {
  if constexpr (is_factory_v<F>) {
    try {
      return std::invoke(declared.factory);
    } catch (const std::exception& e) {
      throw procflow::error(std::string("setup (per_replica factory): ") + e.what());
    }
  } else if constexpr (std::is_copy_constructible_v<F>) {
    return declared;
  } else {
    return std::move(declared);
  }
}

// A sink callable's end of run, in the process that called run() (stages/writers.hpp): commit()
// once after every replica ended well (e.g. a file writer renames the file its copies wrote);
// rollback() when the run failed (it removes that file). Only the declared callable gets them: a
// pf::per_replica factory's products share nothing to commit (flow::sink refuses the pair).
template <class F>
inline constexpr bool commits_output_v = requires(F& f) { f.commit(); };

template <class F>
void commit_output(F& f) {
  if constexpr (commits_output_v<F>) {
    try {
      f.commit();
    } catch (const std::exception& e) {
      throw procflow::error(std::string("commit(): ") + e.what());
    }
  }
}

template <class F>
void rollback_output(F& f) noexcept {
  if constexpr (requires { f.rollback(); }) {
    try {
      f.rollback();
    } catch (...) {  // the run already failed; the failure that matters is reported
    }
  }
}

// A run's output (a callable with commit()), committed once when the run succeeded, else rolled
// back when this goes: the collectors of a sink hold one.
template <class F>
class output_commit {
 public:
  explicit output_commit(F& f) noexcept : f_(f) {}
  output_commit(const output_commit&) = delete;
  output_commit& operator=(const output_commit&) = delete;
  ~output_commit() {
    if (!committed_) rollback_output(f_);
  }
  void commit() {
    commit_output(f_);
    committed_ = true;
  }

 private:
  F& f_;
  bool committed_ = false;
};

// The callable of one stage in one replica, with its end-of-stream protocol.
template <class F>
class replica_callable {
 public:
  using type = callable_t<F>;
  replica_callable() = default;
  explicit replica_callable(F& declared) { fn_.emplace(make_callable(declared)); }
  replica_callable(const replica_callable&) = delete;
  replica_callable& operator=(const replica_callable&) = delete;
  // A replica (or run) that did not finish: a callable with abort() gets it (e.g. a file writer
  // removes its temporary file).
  ~replica_callable() {
    if constexpr (requires(type& f) { f.abort(); }) {
      if (fn_) {
        try {
          fn_->abort();
        } catch (...) {  // the run already failed; the failure that matters is reported
        }
      }
    }
  }

  bool has_value() const noexcept { return fn_.has_value(); }
  // Under pf::restart, after each batch: the callable's flush(), if it has one (a file writer
  // writes the batch's lines before the batch is released).
  void flush() {
    if constexpr (requires(type& f) { f.flush(); }) {
      if (fn_) fn_->flush();
    }
  }
  void emplace(F& declared) { fn_.emplace(make_callable(declared)); }
  type& operator*() noexcept { return *fn_; }

  // End of stream: the callable's finish(), if it has one, then destroys it. A throw from either
  // is a procflow::error saying "teardown" (the callable is then aborted and destroyed later).
  void finish() {
    if (!fn_) return;
    if constexpr (requires(type& f) { f.finish(); }) {
      try {
        fn_->finish();
      } catch (const std::exception& e) {
        throw procflow::error(std::string("teardown (finish()): ") + e.what());
      }
    }
    fn_.reset();
  }

 private:
  std::optional<type> fn_;
};

}  // namespace procflow::detail
