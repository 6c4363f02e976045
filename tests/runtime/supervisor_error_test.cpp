// Checks the rule for errors raised in the caller's process (issue 13, point 11; documented at
// procflow::stage_error and in README): a codec error decoding a collected item or a partial
// result, and a user's combine throwing while the supervisor merges partials, surface as a
// stage_error that names the terminal stage, says it happened in the supervisor (replica is
// no_replica, pid the caller's), carries the original exception's type and message, and keeps
// the original reachable with std::rethrow_if_nested. Every child is reaped before run() throws.
#include "support/child_process.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdint>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <unordered_map>

namespace pf = procflow;
namespace pt = procflow::test;
using i64 = std::int64_t;

namespace {

// A value whose decoder refuses "bad" (a versioned or validated record would do the same).
struct Checked {
  std::string text;
  friend bool operator==(const Checked&, const Checked&) = default;
};

}  // namespace

template <>
struct procflow::codec<Checked> {
  static std::size_t encoded_size(const Checked& c) noexcept { return codec<std::string>::encoded_size(c.text); }
  static std::byte* encode(const Checked& c, std::byte* out) noexcept { return codec<std::string>::encode(c.text, out); }
  static Checked decode(procflow::decoder& in) {
    Checked c{codec<std::string>::decode(in)};
    if (c.text == "bad") throw procflow::codec_error("Checked: refusing value 'bad'");
    return c;
  }
};

namespace {

Checked to_checked(i64 i) { return {i == 777 ? std::string("bad") : std::to_string(i)}; }

// Runs `run`, expects a stage_error raised in the supervisor for `stage`, reporting `type_name`,
// whose nested exception is an `Original` with `message` in its what().
template <class Original>
void check_supervisor_error(const std::function<void()>& run, const std::string& stage, const char* type_name,
                            const std::string& message) {
  bool thrown = false;
  try {
    run();
  } catch (const pf::stage_error& e) {
    thrown = true;
    CAPTURE(e.what());
    CHECK(e.stage() == stage);
    CHECK(e.in_supervisor());
    CHECK(e.replica() == pf::stage_error::no_replica);
    CHECK(e.pid() == ::getpid());
    CHECK(e.kind() == pf::stage_error::cause::exception);
    CHECK(e.exception_type() == type_name);
    CHECK(std::string(e.what()).find("stage '" + stage + "' in the supervisor") != std::string::npos);
    CHECK(std::string(e.what()).find(message) != std::string::npos);
    CHECK(std::string(e.what()).find(e.exception_type()) != std::string::npos);
    bool nested = false;
    try {
      std::rethrow_if_nested(e);
    } catch (const Original& original) {
      nested = true;
      CHECK(std::string(original.what()).find(message) != std::string::npos);
    }
    CHECK(nested);
  }
  CHECK(thrown);
  CHECK(pt::count_children() == 0);
}

}  // namespace

TEST_CASE("supervisor errors: a codec error decoding a collected item names the collect stage") {
  for (const bool ordered : {false, true}) {
    CAPTURE(ordered);
    check_supervisor_error<pf::codec_error>(
        [&] {
          auto flow = pf::pipeline("collect_bad").source("numbers", pf::iota<i64>(0, 2000)).map("wrap", to_checked, pf::replicas(2));
          if (ordered) {
            flow.collect(pf::ordered).run();
          } else {
            flow.collect().run();
          }
        },
        "collect", "procflow::codec_error", "refusing value 'bad'");
  }
}

TEST_CASE("supervisor errors: a codec error decoding a partial result names the reduce stage") {
  check_supervisor_error<pf::codec_error>(
      [] {
        pf::pipeline("partial_bad")
            .source("numbers", pf::iota<i64>(0, 2000))
            .reduce_by_key("group", [](i64 i) { return to_checked(i); }, i64{0}, std::plus<>{}, std::plus<>{},
                           [](const Checked& c) { return std::hash<std::string>{}(c.text); }, pf::replicas(2))
            .run();
      },
      "group", "procflow::codec_error", "refusing value 'bad'");
}

TEST_CASE("supervisor errors: a throwing combine names the reduce stage, ordered or not") {
  auto combine = [](i64 a, i64 b) -> i64 {
    if (b != 0) throw std::overflow_error("combine refused");
    return a + b;
  };
  for (const bool ordered : {false, true}) {
    CAPTURE(ordered);
    check_supervisor_error<std::overflow_error>(
        [&] {
          auto flow = ordered ? pf::pipeline("bad_combine", pf::ordered) : pf::pipeline("bad_combine");
          flow.source("numbers", pf::iota<i64>(1, 100'000)).reduce("sum", i64{0}, std::plus<>{}, combine, pf::replicas(2)).run();
        },
        "sum", "std::overflow_error", "combine refused");
  }
}
