#include <procflow/detail/job_place.hpp>
#include <procflow/error.hpp>
#include <procflow/stages/writers.hpp>

#include <cerrno>
#include <cstdio>
#include <fcntl.h>
#include <random>
#include <unistd.h>

namespace procflow::stages {
namespace detail {

namespace {
constexpr std::size_t flush_at = std::size_t{1} << 16;
}

file_writer::file_writer(const std::string& path) : path_(procflow::detail::path_of_this_rank(path)) {}

file_writer::~file_writer() { abandon(); }

void file_writer::open() {
  std::random_device rd;
  char suffix[32];
  for (int attempt = 0; attempt < 16; ++attempt) {
    std::snprintf(suffix, sizeof suffix, ".tmp-%08x%04x", rd(), static_cast<unsigned>(::getpid() & 0xffff));
    temp_ = path_ + suffix;
    fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd_ >= 0) return;
    if (errno != EEXIST) break;
  }
  const int e = errno;
  temp_.clear();
  throw procflow::system_error(e, "cannot create a temporary file next to '" + path_ + "'");
}

void file_writer::write(std::string_view bytes) {
  if (done_) throw procflow::error("'" + path_ + "': write after the file was closed");
  if (fd_ < 0) open();
  buffer_.append(bytes);
  if (buffer_.size() >= flush_at) flush_buffer();
}

void file_writer::flush_buffer() {
  std::size_t done = 0;
  while (done < buffer_.size()) {
    const ssize_t n = ::write(fd_, buffer_.data() + done, buffer_.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      buffer_.clear();
      throw procflow::system_error(e, "cannot write '" + temp_ + "' (output '" + path_ + "')");
    }
    done += static_cast<std::size_t>(n);
  }
  buffer_.clear();
}

void file_writer::commit() {
  if (done_) return;
  if (fd_ < 0) open();
  flush_buffer();
  if (::fsync(fd_) != 0 && errno != EINVAL && errno != EROFS) {
    const int e = errno;
    throw procflow::system_error(e, "cannot flush '" + temp_ + "' (output '" + path_ + "')");
  }
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    const int e = errno;
    throw procflow::system_error(e, "cannot close '" + temp_ + "' (output '" + path_ + "')");
  }
  if (::rename(temp_.c_str(), path_.c_str()) != 0) {
    const int e = errno;
    throw procflow::system_error(e, "cannot rename '" + temp_ + "' to '" + path_ + "'");
  }
  done_ = true;
}

void file_writer::abandon() noexcept {
  if (done_) return;
  done_ = true;
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!temp_.empty()) ::unlink(temp_.c_str());
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

// ------------------------------------------------------------------ csv_writer

csv_writer::csv_writer(std::string path, std::vector<std::string> header, char delimiter)
    : state_(std::make_shared<state>()) {
  state_->path = std::move(path);
  state_->header = std::move(header);
  state_->delimiter = delimiter;
}

std::string& csv_writer::begin_line() {
  if (!state_->file) {
    state_->file = std::make_unique<detail::file_writer>(state_->path);
    if (!state_->header.empty()) {
      std::string h;
      for (std::size_t i = 0; i < state_->header.size(); ++i) {
        if (i) h += state_->delimiter;
        detail::append_csv_field(h, state_->header[i], state_->delimiter);
      }
      h += '\n';
      state_->file->write(h);
    }
  }
  state_->line.clear();
  return state_->line;
}

void csv_writer::end_line() {
  state_->line += '\n';
  state_->file->write(state_->line);
}

void csv_writer::operator()(const std::vector<std::string>& fields) {
  std::string& line = begin_line();
  for (std::size_t i = 0; i < fields.size(); ++i) {
    if (i) line += state_->delimiter;
    detail::append_csv_field(line, fields[i], state_->delimiter);
  }
  end_line();
}

void csv_writer::finish() {
  if (!state_->file) {
    begin_line();  // an empty result is a file with its header
  }
  try {
    state_->file->commit();
  } catch (...) {
    state_->file->abandon();
    throw;
  }
}

void csv_writer::abort() noexcept {
  if (state_->file) state_->file->abandon();
}

// ------------------------------------------------------------------ jsonl_writer

jsonl_writer::jsonl_writer(std::string path) : state_(std::make_shared<state>()) { state_->path = std::move(path); }

void jsonl_writer::operator()(const std::vector<std::pair<std::string, std::string>>& fields) {
  if (!state_->file) state_->file = std::make_unique<detail::file_writer>(state_->path);
  std::string& line = state_->line;
  line.clear();
  line += '{';
  for (std::size_t i = 0; i < fields.size(); ++i) {
    if (i) line += ',';
    detail::append_json_string(line, fields[i].first);
    line += ':';
    detail::append_json_string(line, fields[i].second);
  }
  line += "}\n";
  state_->file->write(line);
}

void jsonl_writer::operator()(const record& r) {
  if (!state_->file) state_->file = std::make_unique<detail::file_writer>(state_->path);
  std::string& line = state_->line;
  line.clear();
  line += '{';
  for (std::size_t i = 0; i < r.size(); ++i) {
    if (i) line += ',';
    detail::append_json_string(line, r.key(i));
    line += ':';
    detail::append_json_string(line, r.value(i));
  }
  line += "}\n";
  state_->file->write(line);
}

void jsonl_writer::finish() {
  if (!state_->file) state_->file = std::make_unique<detail::file_writer>(state_->path);
  try {
    state_->file->commit();
  } catch (...) {
    state_->file->abandon();
    throw;
  }
}

void jsonl_writer::abort() noexcept {
  if (state_->file) state_->file->abandon();
}

}  // namespace procflow::stages
