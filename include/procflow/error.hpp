// procflow's exception types. Every error procflow throws derives from procflow::error
// (a std::runtime_error); OS failures also carry their errno as a std::error_code.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <system_error>

namespace procflow {

// Base of every procflow exception.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// An operating-system call failed (shm, fork, futex, ...). what() names the call and the
// resource; code() holds errno.
class system_error : public error {
 public:
  system_error(int errno_value, const std::string& message);
  const std::error_code& code() const noexcept { return code_; }

 private:
  std::error_code code_;
};

// Encoded bytes could not be decoded: truncated, corrupt, or larger than a configured limit.
class codec_error : public error {
 public:
  using error::error;
};

// Shared memory failed validation: bad magic/version, an index or length out of bounds.
// Raised instead of ever touching memory outside the segment.
class shm_error : public error {
 public:
  using error::error;
};

// run() was stopped from outside before the pipeline finished: SIGINT or SIGTERM reached the
// process that called run(), or a cancel_source asked it to stop (see cancel.hpp). Every replica
// was stopped and reaped and all shared memory released before it is thrown. signal() is the
// signal number (SIGINT, SIGTERM), 0 for a cancel_source; a program conventionally exits with
// 128 + signal() (130 / 143). Not a stage_error: no stage failed.
class interrupted : public error {
 public:
  explicit interrupted(int signal_number);
  int signal() const noexcept { return signal_; }

 private:
  int signal_;
};

// A stage failed while a pipeline ran. Names the stage, the replica, the process and the item.
//
// The rule for errors raised in the caller's own process (the supervisor): decoding a partial
// result or a collected item (codec_error), or a user's combine merging the replicas' partials,
// is the terminal stage's work done on the caller's side. Such an error becomes a stage_error
// naming the terminal stage, with in_supervisor() true (replica() is no_replica, pid() the
// caller's), the result batch when known, and the original
// exception's type and message; the original itself stays reachable as a nested exception
// (std::throw_with_nested): std::rethrow_if_nested(e) inside `catch (const stage_error& e)`.
class stage_error : public error {
 public:
  enum class cause : std::uint8_t {
    exception,    // user code threw; exception_type() and message() say what
    signal,       // the replica died by a signal; signal_number() says which
    exit,         // the replica exited without finishing its input (exit status in exit_code())
    lost,         // the replica vanished without a record (e.g. reaped by someone else)
    timeout,      // the watchdog killed it: no progress for the stage's timeout (see options.hpp)
  };

  // replica() of an error raised in the supervisor.
  static constexpr std::uint32_t no_replica = 0xffffffffu;

  struct details {
    std::string stage;
    std::uint32_t replica = 0;
    std::int32_t pid = 0;
    cause kind = cause::exception;
    bool has_item = false;           // item_seq is meaningful
    std::uint64_t item_seq = 0;      // see stage_error::item_seq()
    std::string exception_type;      // demangled type of the thrown exception, if any
    std::string message;             // what() of the exception, or a description
    int signal_number = 0;
    int exit_code = 0;
    bool in_supervisor = false;      // raised in the caller's process: no replica (see above)
    // A replica that died without naming its item (signal, exit, watchdog) names the batch it had
    // in hand: items [range_first, range_last), numbered as item_seq().
    bool has_item_range = false;
    std::uint64_t range_first = 0;
    std::uint64_t range_last = 0;
    // A run under pf::restart: the replicas that died and were replaced before this failure, as
    // its report's restart lines would say (the report is not returned when the run fails).
    std::string history;
  };

  explicit stage_error(details d);

  const std::string& stage() const noexcept { return d_.stage; }
  std::uint32_t replica() const noexcept { return d_.replica; }
  std::int32_t pid() const noexcept { return d_.pid; }
  cause kind() const noexcept { return d_.kind; }
  bool has_item() const noexcept { return d_.has_item; }
  // Sequence number of the failing item: its position in the source when the item reached the
  // stage through maps only (1:1 lineage), otherwise its position in the stream that replica
  // received. Meaningful only when has_item().
  std::uint64_t item_seq() const noexcept { return d_.item_seq; }
  const std::string& exception_type() const noexcept { return d_.exception_type; }
  const std::string& message() const noexcept { return d_.message; }
  int signal_number() const noexcept { return d_.signal_number; }
  int exit_code() const noexcept { return d_.exit_code; }
  // True when the error was raised in the process that called run() (see the rule above).
  bool in_supervisor() const noexcept { return d_.in_supervisor; }
  // The batch a replica had in hand when it died by a signal, an exit or the watchdog: items
  // [item_range_first(), item_range_last()), numbered as item_seq(). Meaningful only when
  // has_item_range(); what() says it too, with the phase (starting, in a batch, end of stream).
  bool has_item_range() const noexcept { return d_.has_item_range; }
  std::uint64_t item_range_first() const noexcept { return d_.range_first; }
  std::uint64_t item_range_last() const noexcept { return d_.range_last; }
  // Under pf::restart: the restarts before this failure ("" when none); what() says it too.
  const std::string& history() const noexcept { return d_.history; }
  // Everything above in one value (to pass the failure on, e.g. to another MPI rank).
  const details& info() const noexcept { return d_; }

 private:
  details d_;
};

}  // namespace procflow
