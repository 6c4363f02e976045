// Checks filter()'s instance (include/procflow/detail/stages.hpp) on items that own heap memory,
// without forking: over several batches of strings and vectors it keeps
// exactly the items the predicate accepts, in input order, and the input buffer (which the
// source's next fill() assigns into) keeps elements with their capacity instead of moved-from
// ones. A predicate that throws leaves an output holding only the items kept before it.
#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace pf = procflow;
namespace pd = procflow::detail;

namespace {

template <class T, class F>
std::unique_ptr<pd::stage_instance> make_filter(F pred) {
  pd::filter_stage<T, F> stage("keep", std::move(pred), pf::stage_options{});
  return stage.instantiate(false);
}

template <class T>
pd::batch_buffer<T>& input(pd::stage_instance& s) {
  return *static_cast<pd::batch_buffer<T>*>(s.input_buffer());
}
template <class T>
pd::batch_buffer<T>& output(pd::stage_instance& s) {
  return *static_cast<pd::batch_buffer<T>*>(s.output_buffer());
}

std::string long_text(int i) { return "a line long enough to live on the heap, number " + std::to_string(i); }

}  // namespace

TEST_CASE("filter over strings keeps exactly the accepted items in order, and the input keeps its strings' capacity") {
  auto f = make_filter<std::string>([](const std::string& s) { return s.back() % 3 != 0; });
  auto& in = input<std::string>(*f);
  auto& out = output<std::string>(*f);
  for (int batch = 0; batch < 5; ++batch) {
    const int n = 40 + 17 * batch % 50;  // batches of different sizes: out grows and shrinks
    // Fill as lines() does: assign into the elements already there.
    in.resize(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) in[static_cast<std::size_t>(i)].assign(long_text(batch * 1000 + i));
    std::vector<std::string> want;
    for (const auto& s : in)
      if (s.back() % 3 != 0) want.push_back(s);
    const std::size_t out_before = out.size();
    pd::item_cursor cursor;
    CHECK(f->apply(cursor) == want.size());
    CHECK(std::vector<std::string>(out.begin(), out.end()) == want);
    // A kept item's place in the input is taken by an element of an earlier output (a heap
    // buffer); only items past what the output held get a fresh (small) string, and a moved-from
    // one would be back to the small-string buffer too.
    std::size_t fresh = 0;
    for (const auto& s : in) fresh += s.capacity() < long_text(0).size() ? std::size_t{1} : std::size_t{0};
    CHECK(fresh == (want.size() > out_before ? want.size() - out_before : 0));
    if (batch == 3) CHECK(fresh == 0);  // a smaller batch after a larger one: no fresh strings
  }
}

TEST_CASE("filter over vectors keeps the right items; a throwing predicate leaves only kept ones") {
  SUBCASE("vectors") {
    auto f = make_filter<std::vector<int>>([](const std::vector<int>& v) { return v.size() % 2 == 0; });
    auto& in = input<std::vector<int>>(*f);
    for (int round = 0; round < 3; ++round) {
      in.clear();
      for (int i = 0; i < 30; ++i) in.emplace_back(static_cast<std::size_t>(i + round), i);
      pd::item_cursor cursor;
      REQUIRE(f->apply(cursor) == 15);
      const auto& out = output<std::vector<int>>(*f);
      for (std::size_t k = 0; k < out.size(); ++k) {
        const int i = static_cast<int>(2 * k) + (round % 2);  // sizes i + round that are even
        CHECK(out[k] == std::vector<int>(static_cast<std::size_t>(i + round), i));
      }
    }
  }
  SUBCASE("a predicate that throws") {
    auto f = make_filter<std::string>([](const std::string& s) {
      if (s == "boom") throw std::runtime_error("bad item");
      return s != "drop";
    });
    auto& in = input<std::string>(*f);
    auto& out = output<std::string>(*f);
    out = {long_text(1), long_text(2), long_text(3), long_text(4)};  // left from an earlier batch
    in = {"keep-1", "drop", "keep-2", "boom", "keep-3"};
    pd::item_cursor cursor;
    CHECK_THROWS_WITH(f->apply(cursor), "bad item");
    CHECK(cursor.index == 3);
    CHECK(std::vector<std::string>(out.begin(), out.end()) == std::vector<std::string>{"keep-1", "keep-2"});
  }
}
