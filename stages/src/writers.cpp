#include <procflow/detail/job_place.hpp>
#include <procflow/error.hpp>
#include <procflow/stages/writers.hpp>

#include "file_io.hpp"

#include <cerrno>
#include <cstdio>
#include <fcntl.h>
#include <random>
#include <unistd.h>

namespace procflow::stages {
namespace detail {

namespace {

constexpr std::size_t flush_at = std::size_t{1} << 16;

std::string random_suffix() {
  std::random_device rd;
  char suffix[32];
  std::snprintf(suffix, sizeof suffix, "%08x%08x", rd(), rd());
  return suffix;
}

[[noreturn]] void fail(int e, const char* what, const std::string& file, const std::string& output) {
  throw procflow::system_error(e, std::string(what) + " '" + file + "' (output '" + output + "')");
}
[[noreturn]] void fail(const char* what, const std::string& file, const std::string& output) { fail(errno, what, file, output); }

void close_checked(int fd, const std::string& file, const std::string& output) {
  if (::close(fd) != 0 && errno != EINTR) fail("cannot close", file, output);
}

}  // namespace

output_file::output_file(std::string path, std::string header)
    : path_(std::move(path)), suffix_(".tmp-" + random_suffix()), header_(std::move(header)) {}

std::string output_file::path() const { return procflow::detail::path_of_this_rank(path_); }
std::string output_file::temp_path() const { return path() + suffix_; }

// The header goes in under a private name, then link() puts the whole file under the shared name
// at once (failing if another copy got there first): a copy that opens the shared name finds the
// header in it already.
void output_file::create(const std::string& temp, const std::string& path) const {
  const std::string own = temp + "." + std::to_string(::getpid()) + random_suffix();
  unique_fd fd(::open(own.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666));
  if (!fd) fail("cannot create", own, path);
  // The private name goes whatever happens: linked under `temp`, or given up.
  const auto give_up = [&](int e, const char* what, const std::string& file) {
    ::unlink(own.c_str());
    fail(e, what, file, path);
  };
  if (const int e = write_all(fd.get(), header_); e != 0) give_up(e, "cannot write", own);
  if (const int e = fd.close(); e != 0) give_up(e, "cannot close", own);
  if (::link(own.c_str(), temp.c_str()) != 0 && errno != EEXIST) give_up(errno, "cannot create", temp);
  ::unlink(own.c_str());
}

int output_file::open_for_append() const { return open_for_append(temp_path(), path()); }

int output_file::open_for_append(const std::string& temp, const std::string& final_path) const {
  for (int attempt = 0; attempt < 2; ++attempt) {
    const int fd = ::open(temp.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd >= 0) return fd;
    if (errno != ENOENT) break;
    create(temp, final_path);
  }
  const int e = errno;
  fail(e, "cannot open", temp, final_path);
}

void output_file::commit() const {
  const std::string temp = temp_path();
  const std::string final_path = path();
  unique_fd fd(open_for_append(temp, final_path));
  if (::fsync(fd.get()) != 0 && errno != EINVAL && errno != EROFS) fail("cannot flush", temp, final_path);
  if (const int e = fd.close(); e != 0) fail(e, "cannot close", temp, final_path);
  if (::rename(temp.c_str(), final_path.c_str()) != 0) {
    const int e = errno;
    throw procflow::system_error(e, "cannot rename '" + temp + "' to '" + final_path + "'");
  }
}

void output_file::rollback() const noexcept {
  try {
    ::unlink(temp_path().c_str());
  } catch (...) {  // std::bad_alloc: the temporary file stays
  }
}

void output_part::append(const output_file& file, std::string_view line) {
  buffer_.append(line);
  if (buffer_.size() >= flush_at) flush(file);
}

void output_part::flush(const output_file& file) {
  if (buffer_.empty()) return;
  if (fd_ < 0) fd_ = file.open_for_append();
  const int e = write_all(fd_, buffer_);
  buffer_.clear();
  if (e != 0) fail(e, "cannot write", file.temp_path(), file.path());
}

void output_part::close(const output_file& file) {
  flush(file);
  if (fd_ < 0) return;
  const int fd = fd_;
  fd_ = -1;
  close_checked(fd, file.temp_path(), file.path());
}

void output_part::drop() noexcept {
  buffer_.clear();
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void append_csv_field(std::string& line, std::string_view field, char delimiter) {
  bool quote = false;
  for (char c : field)
    if (c == delimiter || c == '"' || c == '\n' || c == '\r') {
      quote = true;
      break;
    }
  if (!quote) {
    line.append(field);
    return;
  }
  line += '"';
  for (char c : field) {
    if (c == '"') line += '"';
    line += c;
  }
  line += '"';
}

void append_json_string(std::string& out, std::string_view text) {
  static constexpr char hex[] = "0123456789abcdef";
  out += '"';
  for (char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += hex[c >> 4];
          out += hex[c & 0xf];
        } else {
          out += ch;  // UTF-8 passes through
        }
    }
  }
  out += '"';
}

}  // namespace detail

// ------------------------------------------------------------------ file_sink

file_sink::file_sink(const std::string& path, std::string header)
    : file_(std::make_shared<const detail::output_file>(path, std::move(header))) {}
void file_sink::finish() { part_.close(*file_); }
void file_sink::flush() { part_.flush(*file_); }
void file_sink::abort() noexcept { part_.drop(); }
void file_sink::commit() { file_->commit(); }
void file_sink::rollback() noexcept { file_->rollback(); }

// ------------------------------------------------------------------ csv_writer

namespace {

std::string csv_header(const std::vector<std::string>& header, char delimiter) {
  std::string h;
  for (std::size_t i = 0; i < header.size(); ++i) {
    if (i) h += delimiter;
    detail::append_csv_field(h, header[i], delimiter);
  }
  if (!header.empty()) h += '\n';
  return h;
}

}  // namespace

csv_writer::csv_writer(const std::string& path, const std::vector<std::string>& header, char delimiter)
    : file_sink(path, csv_header(header, delimiter)), delimiter_(delimiter) {}

void csv_writer::operator()(const std::vector<std::string>& fields) {
  line_.clear();
  for (std::size_t i = 0; i < fields.size(); ++i) {
    if (i) line_ += delimiter_;
    detail::append_csv_field(line_, fields[i], delimiter_);
  }
  end_line();
}

// ------------------------------------------------------------------ jsonl_writer

jsonl_writer::jsonl_writer(const std::string& path) : file_sink(path, {}) {}

void jsonl_writer::operator()(const std::vector<std::pair<std::string, std::string>>& fields) {
  line_.clear();
  line_ += '{';
  for (std::size_t i = 0; i < fields.size(); ++i) {
    if (i) line_ += ',';
    detail::append_json_string(line_, fields[i].first);
    line_ += ':';
    detail::append_json_string(line_, fields[i].second);
  }
  line_ += "}\n";
  write_line(line_);
}

void jsonl_writer::operator()(const record& r) {
  line_.clear();
  line_ += '{';
  for (std::size_t i = 0; i < r.size(); ++i) {
    if (i) line_ += ',';
    detail::append_json_string(line_, r.key(i));
    line_ += ':';
    detail::append_json_string(line_, r.value(i));
  }
  line_ += "}\n";
  write_line(line_);
}

}  // namespace procflow::stages
