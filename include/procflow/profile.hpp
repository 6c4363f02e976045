// Profiling while a pipeline runs: the samples the supervisor takes of every stage's counters
// (kept in the report as a time series) and what a run can be asked to produce from them — a
// live progress line or callback, a Chrome / Perfetto trace.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace procflow {

// A named counter a stage keeps (pf::counter, counter.hpp): its stage, its name, its count.
struct named_counter {
  std::string stage;
  std::string name;
  std::uint64_t value = 0;
};

// Cumulative counters of one stage (summed over its replicas) at one moment.
struct stage_sample {
  std::uint64_t items_in = 0;
  std::uint64_t items_out = 0;
  double busy_s = 0;
  double starved_s = 0;
  double blocked_s = 0;
};

// The supervisor's reading of every stage's counters `time_s` seconds into the run.
struct run_sample {
  double time_s = 0;
  std::vector<stage_sample> stages;  // in pipeline order
  // Slots in use per boundary ring set (between process group g and g + 1, then the results
  // channel), summed over the boundary's rings.
  std::vector<std::uint32_t> ring_slots_used;
  // The stages' named counters (pf::counter) so far, summed over replicas, in stage order.
  std::vector<named_counter> counters;
};

// What a progress callback gets: the latest sample, with names and rates worked out.
struct progress_snapshot {
  double time_s = 0;
  std::vector<std::string> stage_names;
  std::vector<double> items_per_s;  // items out per second per stage, over the last interval
  run_sample sample;
  std::string bottleneck;  // the stage busiest per replica over the last interval ("" if none)
  double eta_s = -1;       // seconds left when the source's size is known, else -1
};

}  // namespace procflow

namespace procflow {

// Pipeline-wide profiling options (collected into pipeline_options::profile).
struct profile_options {
  std::int64_t sample_interval_ns = 250'000'000;  // how often the supervisor samples the counters
  enum class progress_mode : std::uint8_t { off, terminal, always } progress = progress_mode::off;
  std::function<void(const progress_snapshot&)> on_progress;  // called after every sample
  std::string trace_path;  // write a Chrome / Perfetto trace there at the end ("": none)
  bool counters = true;    // false (counters_off): no per-batch timing, publication or sampling
};

// How often the supervisor samples every stage's counters while the run goes on (default 250 ms;
// the samples become the report's time series, the progress line and callback).
struct sample_every {
  template <class Rep, class Period>
  explicit sample_every(std::chrono::duration<Rep, Period> d) : ns(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()) {
    if (ns < 1'000'000) throw std::invalid_argument("procflow::sample_every: sample at most every millisecond");
  }
  std::int64_t ns;
};

// A live progress line on stderr (items/s per stage, the bottleneck, an ETA when the source's size
// is known), refreshed at every sample. progress(true): only when stderr is a terminal;
// progress::always(): also into a file or pipe; progress(false): never (the default).
struct progress {
  explicit progress(bool on = true) : mode(on ? profile_options::progress_mode::terminal : profile_options::progress_mode::off) {}
  static progress always() {
    progress p;
    p.mode = profile_options::progress_mode::always;
    return p;
  }
  profile_options::progress_mode mode;
};

// Calls `fn` in the caller's process after every sample (it must return quickly: the supervisor
// also moves results and watches the replicas).
struct on_progress {
  explicit on_progress(std::function<void(const progress_snapshot&)> f) : fn(std::move(f)) {}
  std::function<void(const progress_snapshot&)> fn;
};

// Writes a Chrome trace-event JSON timeline (opens in ui.perfetto.dev and chrome://tracing) to
// `path` at the end of the run: one track per replica with its busy / starved / blocked spans.
struct trace {
  explicit trace(std::string p) : path(std::move(p)) {
    if (path.empty()) throw std::invalid_argument("procflow::trace: need a file name");
  }
  std::string path;
};

// Switches the built-in counters' running costs off, for measuring what they cost
// (pipeline_bench's procflow_counters_on / _off): replicas read no clock per batch and publish
// nothing while they run, and the supervisor takes no samples. Items in and out are still counted
// and reported at the end; busy, starved and blocked times, samples and the verdict are not.
// run() refuses it together with what needs the live counters: auto_scale (the scheduler's
// measured rates), trace, progress, on_progress.
struct counters_off_t {
  explicit constexpr counters_off_t() = default;
};
inline constexpr counters_off_t counters_off{};

namespace detail {
inline void apply_profile_option(profile_options& o, counters_off_t) { o.counters = false; }
inline void apply_profile_option(profile_options& o, const sample_every& s) { o.sample_interval_ns = s.ns; }
inline void apply_profile_option(profile_options& o, const progress& p) { o.progress = p.mode; }
inline void apply_profile_option(profile_options& o, const on_progress& p) { o.on_progress = p.fn; }
inline void apply_profile_option(profile_options& o, const trace& t) { o.trace_path = t.path; }
// A whole profile_options at once (e.g. built from a command line).
inline void apply_profile_option(profile_options& o, const profile_options& p) { o = p; }
template <class T>
concept profile_option = requires(profile_options& o, const T& t) { apply_profile_option(o, t); };
}  // namespace detail

}  // namespace procflow
