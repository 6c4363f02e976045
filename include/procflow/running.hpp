// A started pipeline: pipeline(...)...start() returns a procflow::running<R> while the replicas
// run, instead of run()'s blocking result<R>.
//
//   auto job = pf::pipeline("p").source("in", pf::input<int>())
//                  .map("square", square, pf::replicas(2)).collect().start();
//   job.push(3);                        // blocks while the first rings are full (back-pressure)
//   job.try_push(4);                    // never blocks: false if it would have to wait
//   job.close();                        // end of the input stream
//   for (int y : job.results()) ...     // collect: results as they come (in order with pf::ordered)
//   auto r = job.wait();                // what run() returns: value (results not taken yet) + report
//
// | call            | blocks | what it does                                                        |
// |-----------------|--------|---------------------------------------------------------------------|
// | push(x)         | yes    | sends x to the first stage (pf::input<T> source; T exactly)          |
// | try_push(x)     | no     | the same, or false when the rings are full / another thread pushes   |
// | flush()         | no*    | publishes the pushed items now instead of after the latency bound   |
// | close()         | no*    | ends the input: the pipeline finishes what it holds                  |
// | next()          | yes    | collect: the next result, nullopt at the end (throws the failure)    |
// | results()       | yes    | collect: a range over next()                                         |
// | wait()          | yes    | closes the input, waits for the end; returns result<R> or throws     |
// | cancel()        | no     | kills every replica now; wait() throws procflow::interrupted          |
// | ~running()      | yes    | close(), then waits for the pipeline to finish; reaps every process   |
// (* waits only for a push in progress on another thread.)
//
// Pushed items are published when a slot fills, or after the pipeline's latency bound
// (pf::max_latency, 5 ms by default; 0 publishes every item), or at flush()/close().
//
// Threads: start() forks every replica on the calling thread, under run()'s fork rule (no other
// thread may run, unless pf::allow_threads). It then starts two threads of its own: the driver
// (drains results, watches replicas; a sink running in the caller and the collector run there)
// and a latency timer. push/try_push/flush/close/next/wait are safe from any thread. A stage under
// pf::auto_scale forks new replicas later, from the driver thread, while the caller's threads
// run: such a replica inherits only the driver thread, so a lock another thread held at that
// moment stays locked in it. Keep auto_scale stages free of locks the caller's threads take (or
// give them fixed replicas). Results of a collect pipeline that nobody takes are kept in memory.
// The replicas are reaped through pidfds: the caller may fork and wait for children of its own,
// as long as it waits for them by pid (waitpid(-1) / SIGCHLD = SIG_IGN would take procflow's).
#pragma once

#include <procflow/detail/started_run.hpp>
#include <procflow/input.hpp>
#include <procflow/pipeline.hpp>

#include <condition_variable>
#include <deque>
#include <exception>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace procflow {

namespace detail {

template <class R>
inline constexpr bool is_std_vector_v = false;
template <class T, class A>
inline constexpr bool is_std_vector_v<std::vector<T, A>> = true;

template <class T>
class stream_collector;
// What running<R> streams results through: a collect's items, nothing for other terminals.
template <class R>
struct stream_of {
  using type = void;
};
template <class T>
struct stream_of<std::vector<T>> {
  using type = stream_collector<T>;
};

// A collect terminal whose items the caller takes as they come (running::next()).
template <class T>
class stream_collector final : public typed_collector<std::vector<T>> {
 public:
  void consume(const batch_view& batch) override {
    decode_items(batch, scratch_);
    {
      std::lock_guard lock(mutex_);
      for (auto& item : scratch_) items_.push_back(std::move(item));
    }
    scratch_.clear();
    ready_.notify_all();
  }
  std::vector<T> take() override {
    std::lock_guard lock(mutex_);
    std::vector<T> out(std::make_move_iterator(items_.begin()), std::make_move_iterator(items_.end()));
    items_.clear();
    return out;
  }
  // The run ended (driver thread): wakes next().
  void end(std::exception_ptr failure) {
    {
      std::lock_guard lock(mutex_);
      ended_ = true;
      failure_ = std::move(failure);
    }
    ready_.notify_all();
  }
  std::optional<T> next() {
    std::unique_lock lock(mutex_);
    ready_.wait(lock, [&] { return !items_.empty() || ended_; });
    if (!items_.empty()) {
      T item = std::move(items_.front());
      items_.pop_front();
      return item;
    }
    if (failure_) std::rethrow_exception(failure_);
    return std::nullopt;
  }

 private:
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<T> items_;
  bool ended_ = false;
  std::exception_ptr failure_;
  batch_buffer<T> scratch_;  // driver thread only
};

// running::results(): an input range over the results as they come.
template <class T>
struct result_range {
  stream_collector<T>* stream;
  struct iterator {
    using iterator_category = std::input_iterator_tag;
    using value_type = T;
    using difference_type = std::ptrdiff_t;
    stream_collector<T>* stream = nullptr;
    std::optional<T> current;
    T& operator*() { return *current; }
    iterator& operator++() {
      current = stream->next();
      return *this;
    }
    void operator++(int) { ++*this; }
    bool operator==(std::default_sentinel_t) const { return !current.has_value(); }
  };
  iterator begin() {
    iterator it{stream, std::nullopt};
    ++it;
    return it;
  }
  std::default_sentinel_t end() { return {}; }
};

}  // namespace detail

template <class R>
class running {
 public:
  explicit running(detail::pipeline_def def) {
    auto shared = std::make_shared<const detail::pipeline_def>(std::move(def));
    const auto& terminal = *shared->stages.back();
    std::function<void(std::exception_ptr)> on_end;
    if constexpr (detail::is_std_vector_v<R>) {
      if (terminal.kind() == detail::stage_kind::collect) {
        stream_ = std::make_shared<detail::stream_collector<typename R::value_type>>();
        collector_ = stream_;
        on_end = [stream = stream_](std::exception_ptr e) { stream->end(std::move(e)); };
      }
    }
    if (!collector_) {
      const bool is_ordered = shared->options.defaults.ordered ||
                              std::any_of(shared->stages.begin(), shared->stages.end(), [](const auto& s) { return s->options().ordered; });
      collector_ = std::shared_ptr<detail::result_collector>(terminal.make_collector(is_ordered));
    }
    input_ = dynamic_cast<const detail::caller_source_base*>(shared->stages.front().get());
    name_ = shared->name;
    run_ = detail::start_in_processes(std::move(shared), collector_, std::move(on_end));
  }

  running(running&&) noexcept = default;
  running& operator=(running&&) noexcept = default;
  ~running() = default;  // closes the input and waits for the pipeline to finish (see above)

  // Sends `item` to the first stage; blocks while its rings are full. T must be the type of
  // pf::input<T>() exactly. Throws the pipeline's stage_error if it failed.
  template <class T>
  void push(const T& item) {
    check_item<T>();
    write(item, false);
  }
  // The same without waiting: false when the rings are full or another thread is pushing (an
  // item larger than one slot may still wait for its later slots).
  template <class T>
  bool try_push(const T& item) {
    check_item<T>();
    return write(item, true);
  }
  void flush() { run_->flush(); }
  void close() { run_->close(); }

  // collect: the next result as it comes (in source order when the pipeline is ordered);
  // nullopt once the pipeline ended and every result was taken. Throws the pipeline's failure.
  template <class Q = R>
    requires detail::is_std_vector_v<Q>
  std::optional<typename Q::value_type> next() {
    if (!stream_) throw procflow::error("procflow: pipeline '" + name_ + "': next()/results() need a pipeline ending in collect()");
    return stream_->next();
  }

  // collect: an input range over next().
  template <class Q = R>
    requires detail::is_std_vector_v<Q>
  detail::result_range<typename Q::value_type> results() {
    if (!stream_) throw procflow::error("procflow: pipeline '" + name_ + "': next()/results() need a pipeline ending in collect()");
    return detail::result_range<typename Q::value_type>{stream_.get()};
  }

  // Closes the input and waits for the end: what run() returns (a collect's value holds the
  // results next() did not take). Throws stage_error / interrupted as run() does.
  result<R> wait() {
    run_report report = run_->wait();
    if constexpr (std::is_void_v<R>) {
      return {std::move(report)};
    } else {
      return {static_cast<detail::typed_collector<R>*>(collector_.get())->take(), std::move(report)};
    }
  }

  // Stops at once: every replica is killed; wait() throws procflow::interrupted.
  void cancel() noexcept { run_->cancel(); }
  // True once the pipeline ended (finished or failed).
  bool done() const noexcept { return run_->done(); }

 private:
  template <class T>
  void check_item() const {
    if (!input_)
      throw procflow::error("procflow: pipeline '" + name_ + "': push() needs a source fed by the caller (pf::input<T>())");
    if (input_->item_type() != typeid(T))
      throw procflow::error("procflow: pipeline '" + name_ + "': push(): source '" + input_->name() +
                            "' takes another item type than the one pushed (push the exact T of pf::input<T>())");
  }

  template <class T>
  bool write(const T& item, bool try_only) {
    struct context {
      const detail::caller_source_base* source;
      const T* item;
    } c{input_, &item};
    return run_->write([](void* ctx, detail::output_port& port, std::uint64_t) {
      auto* x = static_cast<context*>(ctx);
      x->source->encode(x->item, port);
      return std::uint64_t{1};
    }, &c, detail::publish_mode::latency, try_only);
  }

  std::shared_ptr<detail::result_collector> collector_;
  std::shared_ptr<typename detail::stream_of<R>::type> stream_;  // collect only
  const detail::caller_source_base* input_ = nullptr;
  std::string name_;
  std::unique_ptr<detail::started_run> run_;  // last: destroyed first (waits for the end)
};

template <class R>
running<R> runnable<R>::start() const {
  return running<R>(def_);
}

}  // namespace procflow
