// What the exception being handled is: its demangled type and its message. Used where an
// exception is turned into a report (a replica's failure record, the supervisor's stage_error,
// thread mode's stage_error).
#pragma once

#include <string>

namespace procflow::runtime {

// Demangled type of the exception currently handled (call inside a catch block).
std::string current_exception_type();
// what() of the exception currently handled, or a note that it is not a std::exception.
std::string current_exception_message();

// Throws the stage_error for the exception currently handled (call inside a catch block) when it
// came from the calling process's side of the terminal stage `stage` (decoding results, merging
// partials, a sink's finish(), a progress callback): "in the supervisor", no replica, this pid,
// `where` (may be empty) before the original message, the original nested; `history`: the
// restarts before it under pf::restart (stage_error::history()).
[[noreturn]] void throw_caller_side_error(const std::string& stage, const std::string& where, std::string history = {});

}  // namespace procflow::runtime
