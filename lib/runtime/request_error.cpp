// A pool request's failure, described where the user's stage threw (include/procflow/detail/request.hpp).
#include "runtime/exception_info.hpp"

#include <procflow/detail/request.hpp>

namespace procflow::detail {

void describe_current_exception(std::string& type, std::string& message) {
  type = runtime::current_exception_type();
  message = runtime::current_exception_message();
}

}  // namespace procflow::detail
