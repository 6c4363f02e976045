// file -> one loop -> CSV      (the sequential C++ peer of the ETL examples)
//
//   etl_sequential JOB INPUT --output FILE      JOB: packages_etl | word_count | geoip_etl
//
// The same jobs as examples/packages_etl, word_count and geoip_etl written the way a careful C++
// programmer would without a framework: 1 MiB fread()s into one buffer, parsing in place with
// string_views, one std::unordered_map, no per-line allocation. Its --output matches the example's
// byte for byte (tests/bench/etl_compare.py checks that before it reports a time).
#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

[[noreturn]] void fail(const std::string& message) { throw std::runtime_error(message); }

// Calls on_line(line) for every line of `path` (without '\n' and one trailing '\r'), reading 1 MiB at a time.
template <class OnLine>
void for_each_line(const std::string& path, OnLine on_line) {
  std::FILE* f = path == "-" ? stdin : std::fopen(path.c_str(), "rb");
  if (!f) fail("cannot open '" + path + "': " + std::strerror(errno));
  std::vector<char> buf(1 << 20);
  std::size_t kept = 0;  // bytes of an unfinished line at the front of buf
  for (;;) {
    if (kept == buf.size()) buf.resize(buf.size() * 2);
    const std::size_t got = std::fread(buf.data() + kept, 1, buf.size() - kept, f);
    if (got == 0) {
      if (std::ferror(f)) fail("cannot read '" + path + "'");
      break;
    }
    const char* p = buf.data();
    const char* end = buf.data() + kept + got;
    for (const char* nl; (nl = static_cast<const char*>(std::memchr(p, '\n', static_cast<std::size_t>(end - p))));
         p = nl + 1) {
      std::string_view line(p, static_cast<std::size_t>(nl - p));
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      on_line(line);
    }
    kept = static_cast<std::size_t>(end - p);
    std::memmove(buf.data(), p, kept);
  }
  if (kept) {
    std::string_view line(buf.data(), kept);
    if (line.back() == '\r') line.remove_suffix(1);
    on_line(line);
  }
  if (f != stdin) std::fclose(f);
}

std::uint64_t to_u64(std::string_view s, const char* what) {
  std::uint64_t v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || end != s.data() + s.size()) fail(std::string("bad ") + what + " '" + std::string(s) + "'");
  return v;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

struct string_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
template <class V>
using string_map = std::unordered_map<std::string, V, string_hash, std::equal_to<>>;

template <class V>
V& slot(string_map<V>& m, std::string_view key) {
  auto it = m.find(key);
  if (it == m.end()) it = m.emplace(std::string(key), V{}).first;
  return it->second;
}

struct section_stats {
  std::uint64_t packages = 0, total = 0, largest_size = 0;
  std::string largest;
};

void packages_etl(const std::string& input, std::FILE* out) {
  string_map<section_stats> sections;
  std::string section, name;
  std::uint64_t size = 0;
  bool in_record = false;
  auto finish = [&] {
    if (!in_record) return;
    section_stats& s = slot(sections, section.empty() ? std::string_view("unknown") : std::string_view(section));
    ++s.packages;
    s.total += size;
    if (s.packages == 1 || size > s.largest_size || (size == s.largest_size && name < s.largest)) {
      s.largest_size = size;
      s.largest = name;
    }
    section.clear();
    name.clear();
    size = 0;
    in_record = false;
  };
  for_each_line(input, [&](std::string_view line) {
    if (trim(line).empty()) return finish();
    in_record = true;
    if (line.front() == ' ' || line.front() == '\t') return;  // continuation of a value we do not use
    const auto colon = line.find(':');
    if (colon == std::string_view::npos) return;
    const std::string_view key = line.substr(0, colon), value = trim(line.substr(colon + 1));
    if (key == "Package") name = value;
    else if (key == "Section") section = value;
    else if (key == "Installed-Size") size = to_u64(value, "Installed-Size");
  });
  finish();
  std::vector<std::pair<std::string, section_stats>> rows(sections.begin(), sections.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::fprintf(out, "section,packages,total_installed_size,mean_installed_size,largest_package\n");
  for (const auto& [sec, s] : rows)
    std::fprintf(out, "%s,%llu,%llu,%.2f,%s\n", sec.c_str(), static_cast<unsigned long long>(s.packages),
                 static_cast<unsigned long long>(s.total), static_cast<double>(s.total) / static_cast<double>(s.packages),
                 s.largest.c_str());
}

template <class Map>
void write_counts(const Map& counts, const char* header, std::FILE* out) {
  std::vector<std::pair<std::string, std::uint64_t>> rows(counts.begin(), counts.end());
  std::sort(rows.begin(), rows.end(),
            [](const auto& a, const auto& b) { return a.second != b.second ? a.second > b.second : a.first < b.first; });
  std::fprintf(out, "%s\n", header);
  for (const auto& [k, n] : rows) std::fprintf(out, "%s,%llu\n", k.c_str(), static_cast<unsigned long long>(n));
}

void word_count(const std::string& input, std::FILE* out) {
  string_map<std::uint64_t> counts;
  std::string word;
  auto flush = [&] {
    if (!word.empty()) ++slot(counts, word);
    word.clear();
  };
  for_each_line(input, [&](std::string_view line) {
    for (char c : line) {
      const unsigned char u = static_cast<unsigned char>(c) | 0x20;  // ASCII lower case
      if (u >= 'a' && u <= 'z') {
        word.push_back(static_cast<char>(u));
      } else {
        flush();
      }
    }
    flush();
  });
  write_counts(counts, "word,count", out);
}

void geoip_etl(const std::string& input, std::FILE* out) {
  string_map<std::uint64_t> addresses;
  for_each_line(input, [&](std::string_view line) {
    if (line.empty() || line.front() == '#') return;
    const auto c1 = line.find(','), c2 = line.find(',', c1 + 1);
    if (c2 == std::string_view::npos) fail("bad row '" + std::string(line) + "'");
    const std::uint64_t start = to_u64(line.substr(0, c1), "start"), end = to_u64(line.substr(c1 + 1, c2 - c1 - 1), "end");
    if (end < start) fail("end < start in '" + std::string(line) + "'");
    slot(addresses, line.substr(c2 + 1)) += end - start + 1;
  });
  write_counts(addresses, "country,addresses", out);
}

}  // namespace

int main(int argc, char** argv) {
  std::string job, input, output;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--output" && i + 1 < argc) output = argv[++i];
    else if (job.empty()) job = a;
    else if (input.empty()) input = a;
    else job.clear(), i = argc;
  }
  if (job.empty() || input.empty()) {
    std::fprintf(stderr, "usage: etl_sequential packages_etl|word_count|geoip_etl INPUT [--output FILE]\n");
    return 2;
  }
  std::FILE* out = output.empty() ? std::fopen("/dev/null", "w") : std::fopen(output.c_str(), "w");
  if (!out) {
    std::fprintf(stderr, "etl_sequential: cannot create '%s'\n", output.c_str());
    return 1;
  }
  try {
    if (job == "packages_etl") packages_etl(input, out);
    else if (job == "word_count") word_count(input, out);
    else if (job == "geoip_etl") geoip_etl(input, out);
    else {
      std::fprintf(stderr, "etl_sequential: unknown job '%s'\n", job.c_str());
      return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "etl_sequential %s: %s\n", job.c_str(), e.what());
    return 1;
  }
  if (std::fclose(out) != 0) {
    std::fprintf(stderr, "etl_sequential: cannot write '%s'\n", output.c_str());
    return 1;
  }
  return 0;
}
