#include "reject.hpp"

#include "file_io.hpp"

#include <procflow/counter.hpp>
#include <procflow/detail/bad_input.hpp>
#include <procflow/detail/job_place.hpp>
#include <procflow/error.hpp>
#include <procflow/stages/input.hpp>
#include <procflow/stages/writers.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace procflow::stages::detail {

namespace {

void write_file(const std::string& path, std::string_view text, int mode) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | mode, 0666);
  if (fd < 0) throw procflow::system_error(errno, "cannot open reject file '" + path + "'");
  const int e = write_all(fd, text);
  ::close(fd);
  if (e != 0) throw procflow::system_error(e, "cannot write reject file '" + path + "'");
}

}  // namespace

void create_reject_file(const std::string& path, std::string_view header) {
  if (!path.empty()) write_file(procflow::detail::path_of_this_rank(path), std::string(header) + "\n", O_TRUNC);
}

void reject(std::string_view counter_name, const std::string& path, const rejected& r) {
  procflow::detail::set_aside_input(r, [&] {
    procflow::counter(counter_name).add();
    if (path.empty()) return;
    std::string record;
    const auto field = [&](std::string_view f) {
      append_csv_field(record, f, ',');
      record += ',';
    };
    field(r.file);
    field(std::to_string(r.line));
    if (r.column) field(std::to_string(*r.column));
    field(r.error);
    append_csv_field(record, r.text, ',');
    record += '\n';
    write_file(procflow::detail::path_of_this_rank(path), record, O_APPEND);
  });
}

std::string_view line_for_reject(Reader& r) {
  // A line that was too long may not be read whole yet.
  while (r.window().find('\n') == std::string_view::npos && r.window().size() < reject_text_bytes && r.more()) {
  }
  std::string_view text = r.window();
  text = text.substr(0, std::min({text.find('\n'), text.size(), reject_text_bytes}));
  if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
  return text;
}

}  // namespace procflow::stages::detail
