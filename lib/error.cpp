#include <procflow/error.hpp>

#include <cstring>
#include <string>
#include <utility>

namespace procflow {

system_error::system_error(int errno_value, const std::string& message)
    : error(message + ": " + std::strerror(errno_value)), code_(errno_value, std::generic_category()) {}

interrupted::interrupted(int signal_number)
    : error(signal_number == 0 ? std::string("procflow: run() was cancelled (cancel_source::request_stop)")
                               : "procflow: run() was interrupted by signal " + std::to_string(signal_number) + " (" +
                                     strsignal(signal_number) + ")"),
      signal_(signal_number) {}

stage_error::stage_error(details d) : error(""), d_(std::move(d)) {
  std::string what = "stage '" + d_.stage + "'";
  what += d_.in_supervisor ? std::string(" in the supervisor (the process that called run())")
                           : " replica " + std::to_string(d_.replica) + " (pid " + std::to_string(d_.pid) + ")";
  if (d_.has_item) what += " on item " + std::to_string(d_.item_seq);
  switch (d_.kind) {
    case cause::exception:
      what += ": " + (d_.exception_type.empty() ? std::string("exception") : d_.exception_type) + ": " + d_.message;
      break;
    case cause::signal:
      what += ": killed by signal " + std::to_string(d_.signal_number) + " (" + strsignal(d_.signal_number) + ")";
      if (!d_.message.empty()) what += "; " + d_.message;
      break;
    case cause::exit:
      what += ": exited with status " + std::to_string(d_.exit_code) + " before finishing its input";
      if (!d_.message.empty()) what += "; " + d_.message;
      break;
    case cause::lost:
      what += ": " + d_.message;
      break;
    case cause::timeout:
      what += ": killed by the watchdog: " + d_.message;
      break;
  }
  if (!d_.history.empty()) what += "; before it, under pf::restart: " + d_.history;
  static_cast<std::runtime_error&>(*this) = std::runtime_error(what);
}

}  // namespace procflow
