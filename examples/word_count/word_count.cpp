// lines -> words -> (word, 1) -> counts
//
//   word_count [FILE]     counts the words of FILE (default: a generated 400 000-line corpus)
//
// A line reader (procflow::stages::lines) runs in its own process; a flat_map splits them into lower-cased
// words on every core; reduce_by_key counts each word (partial counts per replica, merged by
// the supervisor). Prints the 10 most frequent words and the per-stage report.
#include <procflow/procflow.hpp>
#include <procflow/stages/lines.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace pf = procflow;

namespace {

// A deterministic stand-in corpus: Zipf-like word frequencies, a few words per line.
class corpus {
 public:
  explicit corpus(std::uint64_t lines) : lines_(lines) {}
  std::optional<std::string> operator()() {
    static constexpr const char* words[] = {"the", "of", "and", "to", "in", "a", "is", "that", "for", "it",
                                            "as", "was", "with", "be", "by", "on", "not", "he", "this", "are",
                                            "Pipeline", "process", "ring", "shared", "memory", "stage", "batch", "core"};
    if (line_ == lines_) return std::nullopt;
    ++line_;
    std::string text;
    const int count = 5 + static_cast<int>(next() % 8);
    for (int i = 0; i < count; ++i) {
      const std::uint64_t r = next() % 1000;
      const std::size_t w = static_cast<std::size_t>((r * r) / 36000) % std::size(words);  // skewed toward the front
      text += words[w];
      text += i + 1 < count ? ' ' : '.';
    }
    return text;
  }

 private:
  std::uint64_t next() {
    state_ ^= state_ << 13;
    state_ ^= state_ >> 7;
    state_ ^= state_ << 17;
    return state_;
  }
  std::uint64_t lines_;
  std::uint64_t line_ = 0;
  std::uint64_t state_ = 0x9e3779b97f4a7c15ULL;
};

std::vector<std::string> split_words(const std::string& line) {
  std::vector<std::string> words;
  std::string word;
  for (char c : line) {
    if (std::isalnum(static_cast<unsigned char>(c))) {
      word += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    } else if (!word.empty()) {
      words.push_back(std::move(word));
      word.clear();
    }
  }
  if (!word.empty()) words.push_back(std::move(word));
  return words;
}

template <class Source>
int count_words(Source source) {
  const auto cores = static_cast<std::uint32_t>(std::max(1u, std::thread::hardware_concurrency()));
  const auto result = pf::pipeline("word_count")
                          .source("lines", std::move(source))
                          .flat_map("words", split_words, pf::replicas(cores))
                          .reduce_by_key("count", [](const std::string& w) { return w; }, std::uint64_t{0},
                                         [](std::uint64_t n, const std::string&) { return n + 1; }, std::plus<>{})
                          .run();
  std::vector<std::pair<std::string, std::uint64_t>> top(result.value.begin(), result.value.end());
  std::sort(top.begin(), top.end(), [](const auto& a, const auto& b) { return a.second != b.second ? a.second > b.second : a.first < b.first; });
  fmt::print("{}\n{} distinct words; the most frequent:\n", result.report, top.size());
  for (std::size_t i = 0; i < std::min<std::size_t>(10, top.size()); ++i) fmt::print("  {:>10}  {}\n", top[i].second, top[i].first);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc > 1) return count_words(pf::stages::lines(argv[1]));
    return count_words(corpus(400'000));
  } catch (const pf::stage_error& e) {
    fmt::print(stderr, "word_count: {}\n", e.what());
    return 1;
  }
}
