#include <procflow/error.hpp>
#include <procflow/stages/input.hpp>

#include "file_io.hpp"

#include <glob.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <fcntl.h>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <unistd.h>

namespace procflow::stages {

namespace {

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

input_file make_file(const std::string& path, std::uint64_t size) {
  input_file f;
  f.path = path;
  f.size = size;
  f.plain = !ends_with(path, ".gz");
  f.id = detail::register_file_name(path);
  return f;
}

// Name table: a deque keeps references stable while it grows.
struct NameTable {
  std::mutex mutex;
  std::deque<std::string> names;
  std::map<std::string, std::uint32_t, std::less<>> ids;
};
NameTable& names() {
  static NameTable table;
  return table;
}

}  // namespace

std::vector<input_file> resolve_input(const std::string& spec) {
  std::vector<input_file> files;
  if (spec == "-") {
    input_file f;
    f.path = "-";
    f.plain = false;
    f.id = detail::register_file_name("-");
    files.push_back(std::move(f));
    return files;
  }
  if (spec.empty()) throw procflow::error("no input given (an empty path)");
  struct stat st {};
  if (::stat(spec.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) {
      std::vector<std::string> paths;
      std::error_code ec;
      for (auto it = std::filesystem::recursive_directory_iterator(spec, ec);
           !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec))
        if (it->is_regular_file(ec)) paths.push_back(it->path().string());
      if (ec) throw procflow::system_error(ec.value(), "cannot list directory '" + spec + "'");
      std::sort(paths.begin(), paths.end());
      for (const auto& p : paths) {
        struct stat fs {};
        if (::stat(p.c_str(), &fs) != 0) throw procflow::system_error(errno, "cannot open '" + p + "'");
        files.push_back(make_file(p, static_cast<std::uint64_t>(fs.st_size)));
      }
      return files;
    }
    if (::access(spec.c_str(), R_OK) != 0) throw procflow::system_error(errno, "cannot open '" + spec + "'");
    files.push_back(make_file(spec, S_ISREG(st.st_mode) ? static_cast<std::uint64_t>(st.st_size) : 0));
    if (!S_ISREG(st.st_mode)) files.back().plain = false;  // a pipe or device: read it in order
    return files;
  }
  const int stat_errno = errno;
  if (spec.find_first_of("*?[") != std::string::npos) {
    glob_t g{};
    const int rc = ::glob(spec.c_str(), 0, nullptr, &g);
    if (rc == GLOB_NOMATCH) {
      ::globfree(&g);
      throw procflow::error("no file matches '" + spec + "'");
    }
    if (rc != 0) {
      ::globfree(&g);
      throw procflow::error("cannot expand '" + spec + "'");
    }
    std::vector<std::string> paths(g.gl_pathv, g.gl_pathv + g.gl_pathc);
    ::globfree(&g);
    std::sort(paths.begin(), paths.end());
    for (const auto& p : paths) {
      struct stat fs {};
      if (::stat(p.c_str(), &fs) != 0) throw procflow::system_error(errno, "cannot open '" + p + "'");
      if (S_ISDIR(fs.st_mode)) continue;
      files.push_back(make_file(p, static_cast<std::uint64_t>(fs.st_size)));
    }
    return files;
  }
  throw procflow::system_error(stat_errno, "cannot open '" + spec + "'");
}

namespace detail {

input_set::input_set(const std::string& spec, std::uint64_t block_bytes)
    : files_(resolve_input(spec)), block_bytes_(std::max<std::uint64_t>(block_bytes, 1)) {
  std::uint64_t total = 0;
  for (const auto& f : files_) {
    splittable_ = splittable_ && f.plain;
    total += (f.size + block_bytes_ - 1) / block_bytes_;
    first_block_.push_back(total);
  }
}

input_set::block input_set::at(std::uint64_t b) const {
  const auto it = std::upper_bound(first_block_.begin(), first_block_.end(), b);
  if (it == first_block_.end()) throw procflow::error("block " + std::to_string(b) + " is past the end of the input");
  const std::size_t i = static_cast<std::size_t>(it - first_block_.begin());
  const std::uint64_t before = i == 0 ? 0 : first_block_[i - 1];
  const std::uint64_t begin = (b - before) * block_bytes_;
  return {&files_[i], begin, std::min(files_[i].size, begin + block_bytes_)};
}

std::uint32_t register_file_name(const std::string& path) {
  NameTable& t = names();
  std::lock_guard lock(t.mutex);
  if (auto it = t.ids.find(path); it != t.ids.end()) return it->second;
  const auto id = static_cast<std::uint32_t>(t.names.size());
  t.names.push_back(path);
  t.ids.emplace(path, id);
  return id;
}

const std::string& file_name(std::uint32_t id) {
  NameTable& t = names();  // read without the lock: see detail::columns (registered before fork)
  static const std::string unknown = "<input>";
  return id < t.names.size() ? t.names[id] : unknown;
}

namespace {
// Newlines in [p, p + n): 8 bytes per step (a byte is '\n' when its XOR with '\n' is zero).
std::uint64_t count_newlines(const char* p, std::size_t n) noexcept {
  constexpr std::uint64_t ones = 0x0101010101010101ull, low7 = 0x7f7f7f7f7f7f7f7full;
  std::uint64_t count = 0;
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, p + i, 8);
    const std::uint64_t t = w ^ (ones * '\n');
    const std::uint64_t zero = ~(((t & low7) + low7) | t | low7);  // 0x80 in each zero byte of t
    count += ((zero >> 7) * ones) >> 56;  // sum of the 0/1 bytes (no popcnt instruction assumed)
  }
  for (; i < n; ++i) count += p[i] == '\n';
  return count;
}

// What line_at() knows of one file in this process, while the file stays the one it counted
// (same device, inode, size and modification time: a file rewritten between two runs of a
// long-lived program is counted again).
struct known_lines {
  struct stat identity {};
  // newlines_before[k]: newlines in bytes [0, k * piece) of the file.
  std::vector<std::uint64_t> newlines_before{0};
  // The last answers, as {offset, newlines before it}: a reader that sets aside row after row
  // asks for offsets a little further on each time (several readers in threads: a few such
  // streams at once), so each answer counts only the bytes since a recent one.
  static constexpr std::size_t remembered = 8;
  std::array<std::pair<std::uint64_t, std::uint64_t>, remembered> recent{};
  std::size_t next = 0;
};

std::atomic<std::uint64_t> bytes_counted{0};

// Newlines in bytes [from, to) of `fd`, read in pieces (stops early at the end of the file).
std::uint64_t count_range(int fd, std::uint64_t from, std::uint64_t to) {
  static char buffer[std::size_t{64} << 10];  // under line_at's lock
  std::uint64_t n = 0;
  while (from < to) {
    const ssize_t got = ::pread(fd, buffer, static_cast<std::size_t>(std::min<std::uint64_t>(sizeof buffer, to - from)),
                                static_cast<off_t>(from));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    n += count_newlines(buffer, static_cast<std::size_t>(got));
    from += static_cast<std::uint64_t>(got);
    bytes_counted.fetch_add(static_cast<std::uint64_t>(got), std::memory_order_relaxed);
  }
  return n;
}

bool same_file(const struct stat& a, const struct stat& b) noexcept {
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino && a.st_size == b.st_size && a.st_mtim.tv_sec == b.st_mtim.tv_sec &&
         a.st_mtim.tv_nsec == b.st_mtim.tv_nsec;
}

// The file line_at() read last, kept open (one descriptor per process, whatever the file count).
struct held_file {
  std::uint32_t id = UINT32_MAX;
  unique_fd fd;
  void close() noexcept {
    fd.reset();
    id = UINT32_MAX;
  }
};
}  // namespace

std::uint64_t line_at(std::uint32_t file_id, std::uint64_t offset) {
  constexpr std::uint64_t piece = std::uint64_t{1} << 20;
  static std::mutex mutex;
  static std::map<std::uint32_t, known_lines> cache;
  static held_file held;
  const std::string path = file_name(file_id);
  std::lock_guard lock(mutex);
  struct stat now {};
  if (::stat(path.c_str(), &now) != 0) return 0;
  known_lines& known = cache[file_id];
  if (!same_file(known.identity, now)) {
    known = known_lines{};
    known.identity = now;
    if (held.id == file_id) held.close();
  }
  if (held.id != file_id) {
    held.close();
    held.fd.reset(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!held.fd) return 0;
    held.id = file_id;
  }
  const int fd = held.fd.get();
  auto& before = known.newlines_before;
  const std::uint64_t k = offset / piece;
  while (before.size() <= k) {
    const std::uint64_t start = (before.size() - 1) * piece;
    before.push_back(before.back() + count_range(fd, start, start + piece));
  }
  // Count from the nearest known point at or before `offset`: its piece's start or a recent answer.
  std::pair<std::uint64_t, std::uint64_t> from{k * piece, before[k]};
  for (const auto& r : known.recent)
    if (r.first <= offset && r.first > from.first) from = r;
  const std::uint64_t newlines = from.second + count_range(fd, from.first, offset);
  known.recent[known.next] = {offset, newlines};
  known.next = (known.next + 1) % known_lines::remembered;
  return newlines + 1;
}

std::uint64_t line_at_bytes_counted() noexcept { return bytes_counted.load(std::memory_order_relaxed); }

}  // namespace detail
}  // namespace procflow::stages
