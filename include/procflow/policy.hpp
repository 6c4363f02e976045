// What a stage does when its function throws on an item: fail (the default), skip, retry.
//
//   .map("parse", parse, pf::skip)                        // set the item aside, go on
//   .map("fetch", fetch, pf::retry(3, 10ms))              // 3 more tries, 10 ms, 20 ms, 40 ms apart, then fail
//   .map("fetch", fetch, pf::retry(3, 10ms, pf::skip))    // ... then skip
//   pf::pipeline("p", pf::skip)                           // every stage without its own policy
//
// A skipped item is counted (stage_report::items_skipped) and the first ones are kept in
// run_report::dead_letters with the stage, the item's sequence number (as stage_error::item_seq),
// the exception and the item itself, encoded (dead_letter.hpp). What a stage did before throwing
// stays done: a flat_map's items emitted for it (unless still in the stage's buffer, then they are
// dropped), a fold's changes to the accumulator through `void fold(Acc&, T)`. A reduce or
// reduce_by_key fold under a policy gets a copy of each item, and so does a stage function that
// takes its item by value or only as an rvalue (the original is kept whole for a retry and a dead
// letter). A crash (signal, exit) is never skipped.
#pragma once

#include <procflow/dead_letter.hpp>

#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

namespace procflow {

struct skip_t {
  explicit constexpr skip_t() = default;
};
inline constexpr skip_t skip{};

struct error_policy {
  std::uint32_t retries = 0;     // tries after the first
  std::int64_t backoff_ns = 0;   // before the first retry; doubles before each next one
  bool then_skip = false;        // after the retries: skip (true) or fail (false)
};

struct retry {
  template <class Rep, class Period>
  retry(std::uint32_t n, std::chrono::duration<Rep, Period> backoff)
      : policy{n, std::chrono::duration_cast<std::chrono::nanoseconds>(backoff).count(), false} {
    if (policy.backoff_ns < 0) throw std::invalid_argument("procflow::retry: the backoff cannot be negative");
  }
  template <class Rep, class Period>
  retry(std::uint32_t n, std::chrono::duration<Rep, Period> backoff, skip_t) : retry(n, backoff) {
    policy.then_skip = true;
  }
  error_policy policy;
};

// restart(n): a replica of the stage that dies — a signal (a segfault, abort(), kill -9), exit() or
// _exit(), a watchdog kill — is replaced by a new process in its place, at most n times per stage
// (a death beyond that fails run() as without it). An exception is not a death: it follows
// fail / skip / retry. The batch the dead replica had taken is delivered again to its replacement,
// so no item is lost; of the output it had already published for that batch, the replacement
// sends only the rest (every output slot carries its input batch and its number in that batch's
// output; the replacement rewrites the batch and drops the slots already sent). Guarantee: every
// item reaches the restarted stages at least once; the items downstream are exactly those of a
// run without the death when the replayed stages are deterministic (the same batch gives the same
// output items in the same order); a stage's own state (a mutable callable, a per_replica
// factory's result) starts afresh in the replacement. A sink callable with flush() gets it after
// each batch, before the batch is released: the built-in file writers' lines of every finished
// batch are in their file, and a replacement appends to the same file (stages/writers.hpp); the
// redelivered batch's rows may be written twice. A pf::counter counts the redelivered batch's
// items again (at least once, like the items); the readers' own counters are exact.
// A reduce under restart sends a partial per batch (its init must be combine's identity, as
// with replicas). The run_report counts restarts per stage and lists each redelivered batch.
// A generate() source in its own process restarts only with its own restart(n) (not the
// pipeline's): it runs again from its start and drops what was sent, so it must yield the same
// items each time (checked: a replay that differs fails run()). In a pf::ordered pipeline the
// replacement reads on at the batch its predecessor expected, and the order holds. Not in thread
// mode: run() refuses it by name.
struct restart {
  explicit restart(std::uint32_t n) : times(n) {
    if (n == 0) throw std::invalid_argument("procflow::restart: need at least 1 restart (without it a death fails run())");
  }
  std::uint32_t times;
};

// Pipeline option: when run() returns, its dead letters (run_report::dead_letters) are also written
// to `path`, one JSON object per line: {"stage", "replica", "item_seq", "exception_type",
// "message", "item_bytes", "item", "item_note"} ("item": the encoded item in base64, or null; see
// dead_letter.hpp, and read_dead_letters() to read the file back); the file is replaced (written
// to path + ".tmp", then renamed), and is written empty when nothing was skipped. A file that
// cannot be written fails run() with procflow::system_error naming it.
struct dead_letters_to {
  explicit dead_letters_to(std::string p) : path(std::move(p)) {
    if (path.empty()) throw std::invalid_argument("procflow::dead_letters_to: empty path");
  }
  std::string path;
};

}  // namespace procflow
