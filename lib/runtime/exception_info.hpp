// What the exception being handled is: its demangled type and its message. Used where an
// exception is turned into a report (a replica's failure record, the supervisor's stage_error).
#pragma once

#include <string>

namespace procflow::runtime {

// Demangled type of the exception currently handled (call inside a catch block).
std::string current_exception_type();
// what() of the exception currently handled, or a note that it is not a std::exception.
std::string current_exception_message();

}  // namespace procflow::runtime
