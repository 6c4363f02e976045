// The supervisor: the process that called run(). It lays out the shared memory, forks every
// replica, drains the results channel, watches the children through pidfds and turns the first
// failure into a stage_error after stopping and reaping everybody.
#include "channel/inbox.hpp"
#include "faults/dead_letter_file.hpp"
#include "faults/dead_letter_record.hpp"
#include "faults/redelivery.hpp"
#include "metrics/replica_rows.hpp"
#include "metrics/sampler.hpp"
#include "metrics/trace_writer.hpp"
#include "process/child.hpp"
#include "runtime/cancel_state.hpp"
#include "runtime/exception_info.hpp"
#include "runtime/identity.hpp"
#include "runtime/interrupt_guard.hpp"
#include "runtime/plan.hpp"
#include "runtime/replica.hpp"
#include "runtime/run_state.hpp"
#include "runtime/supervisor.hpp"
#include "scheduler/elastic.hpp"

#include <procflow/pipeline.hpp>

#include <fmt/format.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cxxabi.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <typeinfo>
#include <algorithm>
#include <cstring>
#include <exception>
#include <filesystem>
#include <map>
#include <optional>
#include <string>

namespace procflow::detail {

namespace {

using namespace procflow::runtime;
using Clock = std::chrono::steady_clock;

// Adds `more` (a terminal collector's note) to a stage's report note.
void add_note(std::string& note, const std::string& more) {
  if (more.empty()) return;
  note += note.empty() ? more : "; " + more;
}

// Who runs in each child: group and replica within it.
struct ReplicaId {
  std::size_t group;
  std::uint32_t replica;
};

class Supervisor final : public SupervisedRun {
 public:
  Supervisor(const pipeline_def& def, result_collector* collector)
      : def_(def), collector_(collector), plan_(make_plan(def)), state_(def, plan_),
        elastic_(def_, plan_, state_, [this](std::size_t g, std::uint32_t r) {
          if (g == 0 && plan_.caller_fed) return;  // the caller writes this group's port itself
          ids_.push_back({g, r});
          children_.spawn([this, g, r] { return run_replica(def_, plan_, state_, g, r); });
        }), sampler_(def_, plan_, state_) {
    // The watchdog bound of each group: the shortest of its stages' (or the pipeline's).
    for (const Group& g : plan_.groups) {
      std::int64_t bound = 0;
      for (std::size_t i = g.first_stage; i < g.end_stage; ++i) {
        const auto ns = def_.stages[i]->options().watchdog_ns.value_or(def_.options.defaults.watchdog_ns.value_or(0));
        if (ns > 0 && (bound == 0 || ns < bound)) bound = ns;
      }
      watchdog_ns_.push_back(bound);
      if (bound > 0) watching_ = true;
    }
    group_restarts_.assign(plan_.groups.size(), 0);
    stage_restarts_.assign(def_.stages.size(), 0);
    stage_recycles_.assign(def_.stages.size(), 0);
    children_.add_wake_fd(interrupts_.wake_fd());
    if (def_.options.cancel) children_.add_wake_fd(def_.options.cancel->wake_fd);
  }

  std::uint64_t seed() const noexcept { return plan_.seed; }
  // pf::counter's table for a sink or collect running in this process.
  metrics::UserCounterTable& caller_counters() const { return state_.caller_counters(); }

  run_report run() {
    start();
    return drive();
  }

  // Forks every replica (on the calling thread: the fork rule).
  void start() {
    t0_ = Clock::now();
    stop_if_interrupted();
    run_start_ns_ = metrics::steady_now_ns();
    sampler_.start(run_start_ns_);
    elastic_.start();
  }

  run_report drive() override {
    const auto t0 = t0_;
    stop_if_interrupted();
    if (plan_.has_results) drain_results();
    // The scheduler (and closing the lanes of replica slots never started) needs short ticks.
    const auto tick = std::min<std::chrono::milliseconds>(
        elastic_.scheduling() || watching_ ? std::chrono::milliseconds(50) : std::chrono::milliseconds(1000), sampler_.interval());
    while (children_.running() > 0) {
      if (auto exit = children_.wait_any(tick)) on_exit(*exit);
      stop_if_interrupted();
      check_watchdog();
      elastic_.tick();
      sample();
    }
    if (collector_) on_caller_side("at the end of the stream (merging partial results, a sink's finish())", [&] { collector_->finish(); });
    stop_if_interrupted();  // a Ctrl-C during the last moments is not swallowed
    run_report report = make_report(std::chrono::duration<double>(Clock::now() - t0).count());
    if (collector_ && !report.stages.empty()) add_note(report.stages.back().note, collector_->note());
    sampler_.finish(report);
    if (!def_.options.dead_letter_path.empty()) faults::write_dead_letters(def_.options.dead_letter_path, report.dead_letters);
    if (!def_.options.profile.trace_path.empty())
      metrics::write_trace(def_.options.profile.trace_path, report, def_, plan_, state_, run_start_ns_);
    return report;
  }

 private:
  // Reads the results channel until end of stream, checking on the children at least every
  // `tick` so that a dead replica is noticed while the channel is quiet.
  void drain_results() {
    channel::InboxOptions o;
    o.ordered = plan_.ordered;
    o.spin = plan_.spin;
    channel::Inbox results(state_.results(), 0, o);
    // Under pf::restart a death is noticed within 10 ms (a poll of the pidfds per tick).
    const bool restarting = std::any_of(plan_.groups.begin(), plan_.groups.end(), [](const Group& g) { return g.restartable; });
    const auto tick = std::chrono::milliseconds(restarting ? 10 : 50);
    auto next_check = Clock::now() + tick;
    // A replica of a scalable group that ended counts itself here and wakes us: once all of a
    // group's replicas completed, the lanes of its slots never started are closed at once
    // (Elastic::on_completions), which its consumers' end of stream waits for, instead of when
    // the next tick reaps the group.
    const std::atomic<std::uint32_t>& ends = state_.header().scalable_ends;
    std::uint32_t ends_seen = ends.load(std::memory_order_acquire);
    // Acquire: pairs with the replica's release, so what it did before counting itself (closing
    // its lanes, recording its completion) is visible once the count is seen.
    const std::function<bool()> ends_moved = [&] { return ends.load(std::memory_order_acquire) != ends_seen; };
    batch_view batch;
    for (;;) {
      if (spin_for_answer(results, batch) || results.receive_until(batch, next_check, ends_moved)) {
        on_caller_side([&] {
          return fmt::format("result batch {} ({} items{})", batch.meta.seq, batch.items,
                             batch.meta.dense ? fmt::format(", source items from {}", batch.meta.first_item) : "");
        }, [&] { collector_->consume(batch); });
        results.release();
      } else if (results.at_end()) {
        return;
      }
      if (const std::uint32_t now_ends = ends.load(std::memory_order_acquire); now_ends != ends_seen) {
        ends_seen = now_ends;
        elastic_.on_completions();
      }
      if (Clock::now() >= next_check) {
        stop_if_interrupted();
        check_watchdog();
        while (auto exit = children_.wait_any(std::chrono::milliseconds(0))) on_exit(*exit);
        elastic_.tick();
        sample();
        next_check = Clock::now() + tick;
      }
    }
  }

  // While a caller waits for answers the pipeline owes (collector_->awaited(): a pool's requests)
  // and the replicas leave a core of the budget idle, this thread spins on the results channel
  // for up to answer_spin before it sleeps, so an answer does not wait for its wake-up (about
  // half of a lone request's round trip on a 2-core machine, issue 17). With every core taken it
  // sleeps at once: spinning there would take the core an answer is computed on.
  // A spin that ran out without an answer (the answers take longer, or other programs hold the
  // cores the count thought idle) makes the next spin_backoff waits sleep at once.
  bool spin_for_answer(channel::Inbox& results, batch_view& batch) {
    constexpr auto answer_spin = std::chrono::microseconds(100);
    constexpr int spin_backoff = 16;
    if (spin_skips_ > 0) {
      --spin_skips_;
      return false;
    }
    if (!collector_ || !collector_->awaited() || !core_idle()) return false;
    const auto until = Clock::now() + answer_spin;
    for (;;) {
      for (int i = 0; i < 64; ++i) {
        if (results.try_receive(batch)) return true;
        channel::cpu_relax();
      }
      if (results.at_end() || !collector_->awaited() || !core_idle()) return false;
      if (Clock::now() >= until) {
        spin_skips_ = spin_backoff;
        return false;
      }
    }
  }

  // Whether the replicas awake (not asleep on their input), with this thread, leave a core of the
  // budget free. A replica of a source group counts as awake.
  bool core_idle() const noexcept {
    std::uint32_t awake = 1;  // this thread
    for (std::size_t g = 0; g < plan_.groups.size(); ++g) {
      const Group& group = plan_.groups[g];
      if (g == 0) {
        if (!plan_.caller_fed) awake += group.replicas;
        continue;
      }
      const channel::Channel& input = state_.input_of(g);
      // Relaxed: a hint; a stale answer costs one short spin, or one missed.
      const std::uint64_t active = input.membership().active.load(std::memory_order_relaxed);
      for (std::uint32_t q = 0; q < input.consumers(); ++q) {
        const bool member = q >= channel::max_masked_lanes || ((active >> q) & 1) != 0;
        if (member && input.data_event(q).waiters.load(std::memory_order_relaxed) == 0) ++awake;
      }
    }
    return awake <= plan_.cores;
  }

  // Live counters (metrics::Sampler); the user's progress callback counts as caller-side work.
  void sample() {
    on_caller_side("in the progress callback", [&] { sampler_.tick(); });
  }

  // SIGINT / SIGTERM reached this process, or the cancel_source asked to stop: stop and reap
  // every replica, then throw procflow::interrupted (the shared memory goes with the Supervisor).
  void stop_if_interrupted() {
    const int signal = InterruptGuard::pending();
    // Relaxed: see cancel_state::requested.
    const bool cancelled = def_.options.cancel && def_.options.cancel->requested.load(std::memory_order_relaxed) != 0;
    if (signal == 0 && !cancelled) return;
    children_.kill_and_reap_all();
    throw interrupted(signal);
  }

  // Kills every replica that spent longer than its group's watchdog bound in one batch or in its
  // end-of-stream work; the exit is then reported by check() as cause::timeout.
  void check_watchdog() {
    if (!watching_) return;
    const auto now = static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count());
    for (std::size_t i = 0; i < children_.size(); ++i) {
      if (children_.reaped(i) || timed_out_ns_.count(i)) continue;
      const std::int64_t bound = watchdog_ns_[ids_[i].group];
      if (bound <= 0) continue;
      const ReplicaRecord& r = state_.record(state_.first_replica(ids_[i].group) + ids_[i].replica);
      // SYNC POINT (acquire): pairs with Replica::note_phase's release store of the phase.
      const auto phase = static_cast<ReplicaPhase>(r.phase.load(std::memory_order_acquire));
      if (phase != ReplicaPhase::in_batch && phase != ReplicaPhase::finishing) continue;
      const std::uint64_t since = r.phase_since_ns.load(std::memory_order_relaxed);
      if (now <= since || now - since <= static_cast<std::uint64_t>(bound)) continue;
      timed_out_ns_[i] = now - since;
      children_.signal_one(i, SIGKILL);
    }
  }

  // A replica ended: a failure throws (check), a completion may end its group.
  void on_exit(const process::ExitInfo& exit) {
    // A replica killed by the same SIGTERM (sent to the whole group) is part of the interruption.
    stop_if_interrupted();
    if (try_recycle(exit)) return;
    if (try_restart(exit)) return;
    check(exit);
    elastic_.on_exit(ids_[exit.index].group, ids_[exit.index].replica);
  }

  // pf::recycle: a replica that left for a fresh process (its record says so: it published its
  // output and ran its teardown) is replaced in its slot.
  bool try_recycle(const process::ExitInfo& exit) {
    const ReplicaId id = ids_[exit.index];
    const ReplicaRecord& record = state_.record(state_.first_replica(id.group) + id.replica);
    // SYNC POINT (acquire): pairs with the replica's release store of its status.
    if (static_cast<ReplicaStatus>(record.status.load(std::memory_order_acquire)) != ReplicaStatus::recycled) return false;
    const Group& g = plan_.groups[id.group];
    ++stage_recycles_[g.input == GroupInput::chunks && g.end_stage > 1 ? g.first_stage + 1 : g.first_stage];
    faults::prepare_replacement(plan_, state_, id.group, id.replica, faults::Redelivery{});
    elastic_.restart_slot(id.group, id.replica);
    return true;
  }

  // pf::restart: a replica of a restartable group that died (a signal, exit(), the watchdog; an
  // exception follows fail / skip / retry instead) is replaced in its slot and its batch
  // delivered again (faults/redelivery.hpp), while its group has restarts left: the largest n of
  // its stages' restart(n), counted per group (fused stages share their processes). False:
  // check() reports the death.
  bool try_restart(const process::ExitInfo& exit) {
    const ReplicaId id = ids_[exit.index];
    const Group& g = plan_.groups[id.group];
    if (!g.restartable) return false;
    const ReplicaRecord& record = state_.record(state_.first_replica(id.group) + id.replica);
    // SYNC POINT (acquire): pairs with the replica's release store of its status.
    const auto status = static_cast<ReplicaStatus>(record.status.load(std::memory_order_acquire));
    if (status != ReplicaStatus::running) return false;  // completed (check() passes it), or an exception
    std::uint32_t allowed = 0;
    for (std::size_t i = g.first_stage; i < g.end_stage; ++i) allowed = std::max(allowed, plan_.restarts[i]);
    if (group_restarts_[id.group] >= allowed) return false;
    const faults::Redelivery r = faults::find_redelivery(plan_, state_, id.group, id.replica);
    if (r.lost) return false;  // check() names the batch; see Inbox::held_redeliverable()
    const std::uint32_t current = record.current_stage.load(std::memory_order_relaxed);
    const std::size_t stage = current < def_.stages.size() ? current : g.first_stage;
    ++group_restarts_[id.group];
    ++stage_restarts_[stage];
    restart_record log;
    log.time_s = static_cast<double>(metrics::steady_now_ns() - run_start_ns_) / 1e9;
    log.stage = def_.stages[stage]->name();
    log.replica = id.replica;
    log.pid = exit.pid;
    if (timed_out_ns_.count(exit.index)) {
      log.cause = "watchdog";
    } else if (!exit.status_known) {
      log.cause = "ended (its exit status was taken by someone else)";
    } else if (WIFSIGNALED(exit.status)) {
      log.cause = fmt::format("killed by signal {} ({})", WTERMSIG(exit.status), strsignal(WTERMSIG(exit.status)));
    } else {
      log.cause = fmt::format("exit code {}", WIFEXITED(exit.status) ? WEXITSTATUS(exit.status) : -1);
    }
    log.redelivered = r.batch;
    log.batch = r.what;
    if (r.item_known) log.batch += fmt::format(", on item {}", r.item_seq);
    log.sent_slots = r.sent_slots;
    restart_log_.push_back(std::move(log));
    faults::prepare_replacement(plan_, state_, id.group, id.replica, r);
    elastic_.restart_slot(id.group, id.replica);
    return true;
  }

  // Runs the terminal stage's caller-side work (decoding results, merging partials with the
  // user's combine). Whatever it throws becomes a stage_error naming the terminal stage "in the
  // supervisor", with the original nested (the rule documented at stage_error), after every
  // child was stopped and reaped.
  template <class Where, class Work>
  void on_caller_side(const Where& where, Work&& work) {
    try {
      work();
    } catch (const stage_error&) {
      children_.kill_and_reap_all();
      throw;  // already names its stage
    } catch (...) {
      children_.kill_and_reap_all();
      const std::string text = [&]() -> std::string {
        if constexpr (std::is_invocable_v<const Where&>) {
          return where();
        } else {
          return where;
        }
      }();
      runtime::throw_caller_side_error(def_.stages.back()->name(), text, restart_history());
    }
  }

  // Throws stage_error (after stopping everybody) if `exit` is not a clean completion.
  void check(const process::ExitInfo& exit) {
    const ReplicaId id = ids_[exit.index];
    const Group& g = plan_.groups[id.group];
    const std::uint32_t global = state_.first_replica(id.group) + id.replica;
    ReplicaRecord& record = state_.record(global);
    // SYNC POINT (acquire): pairs with the replica's release store of its status.
    const auto status = static_cast<ReplicaStatus>(record.status.load(std::memory_order_acquire));
    if (exit.status_known && WIFEXITED(exit.status) && WEXITSTATUS(exit.status) == exit_completed &&
        status == ReplicaStatus::completed)
      return;
    // Reaped by somebody else (SIGCHLD set to SIG_IGN, a handler calling wait()): the record
    // still tells whether the replica finished; anything short of `completed` is a failure.
    if (!exit.status_known && status == ReplicaStatus::completed) return;
    // Under restart, a replica that recorded its completion did all its work, however it ended.
    if (g.restartable && status == ReplicaStatus::completed) return;

    stage_error::details d;
    d.replica = id.replica;
    d.pid = exit.pid;
    const std::uint32_t current = record.current_stage.load(std::memory_order_relaxed);
    d.stage = def_.stages[current < def_.stages.size() ? current : g.first_stage]->name();
    if (const auto t = timed_out_ns_.find(exit.index); t != timed_out_ns_.end()) {
      d.kind = stage_error::cause::timeout;
      d.message = fmt::format("no progress for {:.3f} s (watchdog {:.3f} s)", static_cast<double>(t->second) / 1e9,
                              static_cast<double>(watchdog_ns_[id.group]) / 1e9);
    } else if (status == ReplicaStatus::failed) {
      record.exception_type[sizeof record.exception_type - 1] = '\0';  // never trust shared memory
      record.message[sizeof record.message - 1] = '\0';
      const std::size_t stage = record.stage < def_.stages.size() ? record.stage : g.first_stage;
      d.stage = def_.stages[stage]->name();
      d.kind = stage_error::cause::exception;
      d.has_item = record.has_item != 0;
      d.item_seq = record.item_seq;
      d.exception_type = record.exception_type;
      d.message = record.message;
    } else if (!exit.status_known) {
      d.kind = stage_error::cause::lost;
      d.message =
          "the process ended before finishing its input; its exit status was taken by someone else "
          "(SIGCHLD ignored, or a SIGCHLD handler that calls wait), so the signal or exit code is unknown";
    } else if (WIFSIGNALED(exit.status)) {
      d.kind = stage_error::cause::signal;
      d.signal_number = WTERMSIG(exit.status);
    } else if (WIFEXITED(exit.status)) {
      d.kind = stage_error::cause::exit;
      d.exit_code = WEXITSTATUS(exit.status);
      if (d.exit_code == 0) d.message = "user code called exit()";
    } else {
      d.kind = stage_error::cause::lost;
      d.message = fmt::format("the process ended with an unexpected wait status {:#x}", exit.status);
    }
    if (d.kind != stage_error::cause::exception) describe_activity(record, d);
    if (g.restartable && d.kind != stage_error::cause::exception) describe_restarts(id, record, d);
    if (g.end_stage - g.first_stage > 1) {
      std::string fused;
      for (std::size_t i = g.first_stage; i < g.end_stage; ++i) fused += (fused.empty() ? "" : ", ") + def_.stages[i]->name();
      if (d.kind != stage_error::cause::exception) d.message += (d.message.empty() ? "" : "; ") + fmt::format("process runs stages {}", fused);
    }
    d.history = restart_history();
    children_.kill_and_reap_all();
    throw stage_error(std::move(d));
  }

  // The restarts before a failure, for its stage_error: the last few, oldest first.
  std::string restart_history() const {
    constexpr std::size_t shown = 8;
    const std::size_t first = restart_log_.size() > shown ? restart_log_.size() - shown : 0;
    std::string out = first != 0 ? fmt::format("({} earlier restarts not shown) ", first) : std::string();
    for (std::size_t i = first; i < restart_log_.size(); ++i) out += (i > first ? "; " : "") + restart_log_[i].to_string();
    return out;
  }

  // What a replica that died without a failure record was doing (see ReplicaRecord::phase):
  // the batch it had in hand becomes the error's item range.
  static void describe_activity(const ReplicaRecord& r, stage_error::details& d) {
    // Relaxed: the replica was reaped (or is being killed by the watchdog); see ReplicaRecord.
    const auto phase = static_cast<ReplicaPhase>(r.phase.load(std::memory_order_relaxed));
    const std::uint64_t items = r.batch_items.load(std::memory_order_relaxed);
    std::string where;
    switch (phase) {
      case ReplicaPhase::starting: where = "before its first batch"; break;
      case ReplicaPhase::in_batch: {
        const std::uint64_t first = r.batch_first.load(std::memory_order_relaxed);
        const bool dense = r.batch_dense.load(std::memory_order_relaxed) != 0;
        d.has_item_range = true;
        d.range_first = first;
        d.range_last = first + items;
        where = fmt::format("while processing batch {}: {} items [{}, {})", r.batch_seq.load(std::memory_order_relaxed),
                            dense ? "source" : "input", first, first + items);
        break;
      }
      case ReplicaPhase::waiting: where = "between batches (waiting for input)"; break;
      case ReplicaPhase::finishing: where = "at the end of the stream (finishing, sending partial results)"; break;
      case ReplicaPhase::producing: where = fmt::format("while producing items (after {} items)", items); break;
      default: where = "in an unknown phase"; break;  // never trust shared memory
    }
    d.message += (d.message.empty() ? "" : "; ") + where;
  }

  // A death under restart that check() reports: the group's restarts were used up (and a
  // replacement running the batch again names the item it died on), or the batch could not be
  // read again.
  void describe_restarts(const ReplicaId& id, const ReplicaRecord& record, stage_error::details& d) const {
    const Group& g = plan_.groups[id.group];
    std::uint32_t allowed = 0;
    for (std::size_t i = g.first_stage; i < g.end_stage; ++i) allowed = std::max(allowed, plan_.restarts[i]);
    // Relaxed: the replica was reaped.
    if (record.item_known.load(std::memory_order_relaxed) != 0) {
      d.has_item = true;
      d.item_seq = record.item_seq_now.load(std::memory_order_relaxed);
      const std::uint32_t s = record.item_stage.load(std::memory_order_relaxed);
      if (s < def_.stages.size()) d.stage = def_.stages[s]->name();
    }
    if (group_restarts_[id.group] >= allowed && allowed > 0) {
      d.message += fmt::format("; {} replicas of this process group died and were replaced before (restart({})): no restart left",
                               group_restarts_[id.group], allowed);
    } else if ((record.batch_origin_lane.load(std::memory_order_relaxed) & faults::lost_origin_bit) != 0) {
      d.message += "; not restarted: its batch was an item larger than its input ring, whose slots were already given back";
    }
  }

  std::size_t first_counted_stage(std::size_t group) const {
    const Group& g = plan_.groups[group];
    return g.input == GroupInput::chunks && g.end_stage > 1 ? g.first_stage + 1 : g.first_stage;
  }

  run_report make_report(double wall_s) const {
    run_report report;
    report.pipeline = def_.name;
    report.wall_s = wall_s;
    report.processes = elastic_.processes();
    report.peak_processes = elastic_.peak_processes();
    report.cores = plan_.cores;
    report.decisions = elastic_.decisions();
    for (std::size_t i = 0; i < def_.stages.size(); ++i) {
      const auto& s = *def_.stages[i];
      stage_report r;
      r.name = s.name();
      r.kind = kind_name(s.kind());
      r.process_group = plan_.stage_group[i];
      if (plan_.held_to_one[i])
        r.note = "holds state (its callable cannot be called as const): runs in 1 process; give it replicas(n) "
                 "to replicate it, or pf::per_replica for state per replica";
      if (i == 0 && def_.options.defaults.restarts && !s.options().restarts && r.process_group < plan_.groups.size() &&
          plan_.groups[r.process_group].input == GroupInput::generator)
        add_note(r.note,
                 "not restarted under the pipeline's pf::restart: a generator would be run again from its start, "
                 "which is right only if it yields the same items again; say so with its own pf::restart(n) (a "
                 "splittable source, e.g. pf::iota or pf::from, is restarted)");
      if (i + 1 == def_.stages.size() && s.kind() == detail::stage_kind::sink && s.runs_in_supervisor() &&
          def_.options.defaults.on_error)
        add_note(r.note,
                 "runs in the caller's process, so the pipeline's pf::skip / pf::retry does not apply to it (a throw "
                 "fails run()); give it pf::own_process to run it in a replica, where the policy applies");
      if (r.process_group < plan_.groups.size()) {
        r.replicas = elastic_.final_replicas(r.process_group);
        r.peak_replicas = elastic_.peak_replicas(r.process_group);
        for (std::uint32_t k = 0; k < plan_.groups[r.process_group].slots; ++k) {
          const StageCounters& c = state_.counters(i, k);
          r.replica_items_in.push_back(c.items_in.load(std::memory_order_relaxed));
          r.items_in += r.replica_items_in.back();
          r.items_out += c.items_out.load(std::memory_order_relaxed);
          r.batches_in += c.batches_in.load(std::memory_order_relaxed);
          r.bytes_in += c.bytes_in.load(std::memory_order_relaxed);
          r.busy_s += static_cast<double>(c.busy_ns.load(std::memory_order_relaxed)) / 1e9;
          r.starved_s += static_cast<double>(c.starved_ns.load(std::memory_order_relaxed)) / 1e9;
          r.blocked_s += static_cast<double>(c.blocked_ns.load(std::memory_order_relaxed)) / 1e9;
          r.items_skipped += c.items_skipped.load(std::memory_order_relaxed);
          r.retries += c.retries.load(std::memory_order_relaxed);
        }
        r.restarts = stage_restarts_[i];
        r.recycles = stage_recycles_[plan_.stage_group[i] < plan_.groups.size() ? first_counted_stage(plan_.stage_group[i]) : i];
      } else {
        r.replicas = 0;  // runs in the supervisor (collect)
      }
      if (i == 0 && r.items_in == 0) r.items_in = r.items_out;
      report.stages.push_back(std::move(r));
    }
    // Dead letters (every replica was reaped: its record is final).
    for (std::size_t g = 0; g < plan_.groups.size(); ++g)
      for (std::uint32_t k = 0; k < plan_.groups[g].slots; ++k) {
        const std::uint32_t global = state_.first_replica(g) + k;
        const std::uint32_t n = std::min<std::uint32_t>(state_.record(global).dead_letter_count,
                                                        dead_letters_per_replica);  // never trust shared memory
        for (std::uint32_t i = 0; i < n; ++i)
          report.dead_letters.push_back(faults::read_dead_letter(def_, state_, global, k, i));
      }
    if (def_.stages.back()->runs_in_supervisor() && report.stages.size() >= 2) {
      auto& collect = report.stages.back();
      collect.items_in = collect.items_out = report.stages[report.stages.size() - 2].items_out;
    }
    report.restarts = restart_log_;
    metrics::add_replica_rows(report, def_, plan_, state_, run_start_ns_);
    metrics::add_user_counters(report, def_, plan_, state_);
    return report;
  }

  const RunState& state() const noexcept override { return state_; }
  const Plan& plan() const noexcept override { return plan_; }

  const pipeline_def& def_;
  result_collector* collector_;
  int spin_skips_ = 0;  // spin_for_answer() backs off after a spin that found no answer
  Clock::time_point t0_;
  Plan plan_;
  RunState state_;
  std::vector<ReplicaId> ids_;
  std::uint64_t run_start_ns_ = 0;  // steady clock (metrics::steady_now_ns)
  scheduler::Elastic elastic_;
  metrics::Sampler sampler_;
  std::vector<std::int64_t> watchdog_ns_;  // per group, 0: not watched
  bool watching_ = false;
  std::map<std::size_t, std::uint64_t> timed_out_ns_;  // child index -> time without progress when killed
  std::vector<std::uint32_t> group_restarts_;  // pf::restart: replacements so far, per group
  std::vector<std::uint32_t> stage_restarts_;  // ... per stage the replica died in
  std::vector<restart_record> restart_log_;
  std::vector<std::uint32_t> stage_recycles_;  // pf::recycle, per group's first worker stage
  InterruptGuard interrupts_;   // the host's dispositions come back after the children are gone
  process::ChildSet children_;  // destroyed first: children die before the shared memory goes
};

}  // namespace

// run() and start() refuse to fork while other threads run (unless pf::allow_threads).
void check_fork_rule(const pipeline_def& def) {
  // Relaxed: see cancel_state::requested.
  if (def.options.cancel && def.options.cancel->requested.load(std::memory_order_relaxed) != 0) throw interrupted(0);
  if (!def.options.allow_threads) {
    // A thread joined just now is still listed for a moment (the kernel wakes its joiner before
    // it removes the thread: seen ~1 in 1000 joins): it gets a short grace, a running one does not.
    if (!process::await_thread_count(1, std::chrono::milliseconds(50)))
      throw procflow::error(fmt::format(
          "procflow: pipeline '{}': run() was called while this process has {} threads; fork() copies only the "
          "calling thread, so a lock another thread holds would stay locked in every replica. Join the other "
          "threads first, or pass procflow::allow_threads to pipeline() if they hold nothing a stage uses",
          def.name, process::thread_count()));
  }
}

// What run() and start() do in the calling process before anything of the run exists.
void prepare_run(const pipeline_def& def) {
  check_fork_rule(def);
  if (const source_base* source = def.stages.front()->source()) source->begin_run();
}

run_report run_in_processes(const pipeline_def& def, result_collector* collector) {
  if (runtime::caller_fed(def))
    throw procflow::error(fmt::format("procflow: pipeline '{}': its source '{}' is fed by the caller (pf::input): use start(), not run()",
                                      def.name, def.stages.front()->name()));
  prepare_run(def);
  // pf::this_replica() in a sink or collect running here; restored however run() ends.
  struct IdentityScope {
    Identity saved = identity();
    ~IdentityScope() { set_identity(saved); }
  } scope;
  Supervisor supervisor(def, collector);
  metrics::CounterTableScope counters(&supervisor.caller_counters());  // restored before the shared memory goes
  Identity id;
  id.def = &def;
  id.stage = def.stages.size() - 1;
  id.run_seed = supervisor.seed();
  id.in_supervisor = true;
  set_identity(id);
  return supervisor.run();
}

}  // namespace procflow::detail

namespace procflow::runtime {

std::unique_ptr<SupervisedRun> start_supervised(const detail::pipeline_def& def, detail::result_collector* collector) {
  detail::prepare_run(def);
  auto supervisor = std::make_unique<detail::Supervisor>(def, collector);
  supervisor->start();
  return supervisor;
}

}  // namespace procflow::runtime
