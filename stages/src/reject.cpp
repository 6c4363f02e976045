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
#include <atomic>
#include <cerrno>

namespace procflow::stages::detail {

namespace {

unique_fd open_reject_file(const std::string& path, int mode) {
  unique_fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | mode, 0666));
  if (!fd) throw procflow::system_error(errno, "cannot open reject file '" + path + "'");
  return fd;
}

void write_checked(int fd, const std::string& path, std::string_view text) {
  if (const int e = write_all(fd, text); e != 0) throw procflow::system_error(e, "cannot write reject file '" + path + "'");
}

// Moved by create_reject_file(), at the start of every run that has a reject file.
std::atomic<std::uint64_t> runs_begun{0};

// The reject file a thread appended to last, kept open: a rejected record costs one write(2)
// instead of open, write and close. Opened again by name when another file is written or a run
// began since (so a descriptor is never used past its run: a file truncated, removed or renamed
// between runs is not written through an old one). One per thread, so no lock is taken; a replica
// inherits its creator's and opens its own, the run having begun since.
class append_descriptor {
 public:
  int of(const std::string& path) {
    const std::uint64_t run = runs_begun.load(std::memory_order_acquire);
    if (fd_ && run == run_ && path == path_) return fd_.get();
    fd_.reset();
    fd_ = open_reject_file(path, O_APPEND);
    path_ = path;
    run_ = run;
    return fd_.get();
  }

 private:
  std::string path_;
  std::uint64_t run_ = 0;
  unique_fd fd_;
};

}  // namespace

void create_reject_file(const std::string& path, std::string_view header) {
  if (path.empty()) return;
  const std::string name = procflow::detail::path_of_this_rank(path);
  write_checked(open_reject_file(name, O_TRUNC).get(), name, std::string(header) + "\n");
  runs_begun.fetch_add(1, std::memory_order_acq_rel);
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
    static thread_local append_descriptor appender;
    const std::string name = procflow::detail::path_of_this_rank(path);
    write_checked(appender.of(name), name, record);
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
