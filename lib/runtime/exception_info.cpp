#include "runtime/exception_info.hpp"

#include <procflow/error.hpp>

#include <cxxabi.h>
#include <unistd.h>

#include <cstdlib>
#include <exception>
#include <memory>
#include <typeinfo>
#include <utility>

namespace procflow::runtime {

std::string current_exception_type() {
  const std::type_info* type = abi::__cxa_current_exception_type();
  if (!type) return "unknown exception";
  int status = 0;
  std::unique_ptr<char, decltype(&std::free)> name(abi::__cxa_demangle(type->name(), nullptr, nullptr, &status), &std::free);
  return status == 0 && name ? std::string(name.get()) : std::string(type->name());
}

std::string current_exception_message() {
  try {
    throw;
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "(not a std::exception)";
  }
}

void throw_caller_side_error(const std::string& stage, const std::string& where, std::string history) {
  stage_error::details d;
  d.stage = stage;
  d.in_supervisor = true;
  d.replica = stage_error::no_replica;
  d.pid = static_cast<std::int32_t>(::getpid());
  d.kind = stage_error::cause::exception;
  d.exception_type = current_exception_type();
  d.message = where.empty() ? current_exception_message() : where + ": " + current_exception_message();
  d.history = std::move(history);
  std::throw_with_nested(stage_error(std::move(d)));
}

}  // namespace procflow::runtime
