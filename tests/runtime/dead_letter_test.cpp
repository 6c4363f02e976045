// Checks include/procflow/dead_letter.hpp and lib/faults (dead_letter_record, dead_letter_file,
// base64): a dead letter keeps the failing item encoded with the stage's input codec, in the report,
// its JSON and the pf::dead_letters_to file, and decode_item() / read_dead_letters() give the item
// back; a too-large item keeps its size only; under a policy a stage function that takes its item
// by value or as an rvalue gets a copy, so a retry sees the whole item. Every pipeline runs in a
// child of the test under a watchdog (support/isolated.hpp).
#include "faults/base64.hpp"
#include "support/child_process.hpp"
#include "support/isolated.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace pf = procflow;
namespace pt = procflow::test;
using i64 = std::int64_t;
using namespace std::chrono_literals;

namespace dl_test {

struct Trip {
  std::string origin;
  std::int32_t delay = 0;
  double miles = 0;
  bool operator==(const Trip&) const = default;
};
PROCFLOW_CODEC(Trip, origin, delay, miles);

Trip trip_of(i64 x) {
  return {"city-" + std::to_string(x), static_cast<std::int32_t>(x), static_cast<double>(x) * 0.5};
}

}  // namespace dl_test

namespace {

using dl_test::Trip;
using dl_test::trip_of;

void isolated(const char* what, const std::function<void()>& body) { pt::run_isolated(what, 60s, body); }

constexpr i64 n = 20000;
// Two items fail in each stage: 6 letters, within dead_letters_per_replica even if one replica
// runs every stage and gets them all.
bool fails_in_m(i64 x) { return x == 3 || x == 13003; }
bool fails_in_f(i64 x) { return x == 1005 || x == 14005; }
bool fails_in_count(i64 x) { return x == 2007 || x == 15007; }

// A temporary directory removed with what is in it.
struct TempDir {
  TempDir() {
    char name[] = "/tmp/procflow_dead_letter_XXXXXX";
    REQUIRE(::mkdtemp(name) != nullptr);
    path = name;
  }
  ~TempDir() {
    for (const char* f : {"/dead.jsonl", "/dead.jsonl.tmp"}) std::remove((path + f).c_str());
    ::rmdir(path.c_str());
  }
  std::string path;
};

}  // namespace

TEST_CASE("base64: RFC 4648 vectors, round trips, and non-canonical text refused") {
  const auto bytes = [](std::string_view s) {
    std::vector<std::byte> b;
    for (char c : s) b.push_back(static_cast<std::byte>(c));
    return b;
  };
  const std::pair<const char*, const char*> vectors[] = {{"", ""},
                                                         {"f", "Zg=="},
                                                         {"fo", "Zm8="},
                                                         {"foo", "Zm9v"},
                                                         {"foob", "Zm9vYg=="},
                                                         {"fooba", "Zm9vYmE="},
                                                         {"foobar", "Zm9vYmFy"}};
  for (const auto& [plain, coded] : vectors) {
    CHECK(pf::faults::base64_encode(bytes(plain)) == coded);
    const auto back = pf::faults::base64_decode(coded);
    REQUIRE(back.has_value());
    CHECK(*back == bytes(plain));
  }
  std::vector<std::byte> all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<std::byte>(i));
  for (std::size_t len = 0; len <= all.size(); len += 17) {
    const std::vector<std::byte> part(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(len));
    CHECK(pf::faults::base64_decode(pf::faults::base64_encode(part)) == part);
  }
  for (const char* wrong : {"Zg=", "Zh==", "Zm9=", "Z===", "=Zm9", "Zm=v", "Zm9v!A==", "Zm9\n"})
    CHECK_MESSAGE(!pf::faults::base64_decode(wrong).has_value(), wrong);
}

TEST_CASE("a skipped item is kept encoded: decode_item gives back the item that failed, in each kind of stage") {
  isolated("dead letter items", [] {
    // m takes its Trip by value (a copy is kept under the policy); f is a filter; the fold of the
    // reduce gets a copy. Each stage fails on other items.
    const auto r = pf::pipeline("dead items", pf::skip)
                       .source("n", pf::iota<i64>(0, n))
                       .map("trip", [](i64 x) { return trip_of(x); })
                       .map(
                           "m",
                           [](Trip t) {
                             if (fails_in_m(t.delay))
                               throw std::invalid_argument("bad delay " + std::to_string(t.delay));
                             return t;
                           },
                           pf::replicas(2))
                       .filter("f",
                               [](const Trip& t) {
                                 if (fails_in_f(t.delay)) throw std::domain_error("bad origin " + t.origin);
                                 return true;
                               })
                       .reduce(
                           "count", i64{0},
                           [](i64 c, const Trip& t) {
                             if (fails_in_count(t.delay))
                               throw std::range_error("bad miles " + std::to_string(t.miles));
                             return c + 1;
                           },
                           std::plus<>{})
                       .run();
    std::set<std::string> stages;
    REQUIRE(!r.report.dead_letters.empty());
    for (const auto& d : r.report.dead_letters) {
      INFO(d.stage, " item ", d.item_seq, ": ", d.item_note);
      stages.insert(d.stage);
      REQUIRE(d.item_kept);
      CHECK(d.item_note.empty());
      CHECK(d.item_bytes == d.item.size());
      const Trip t = d.decode_item<Trip>();
      CHECK(t == trip_of(t.delay));  // whole, not a moved-from shell
      if (d.stage == "m") {
        CHECK(fails_in_m(t.delay));
        CHECK(d.message == "bad delay " + std::to_string(t.delay));
      } else if (d.stage == "f") {
        CHECK(fails_in_f(t.delay));
        CHECK(d.message == "bad origin " + t.origin);
      } else {
        CHECK(d.stage == "count");
        CHECK(fails_in_count(t.delay));
      }
    }
    CHECK(r.report.dead_letters.size() == 6);
    CHECK(stages == std::set<std::string>{"m", "f", "count"});
    CHECK(r.value == n - 6);
    CHECK(r.report.to_string().find("bytes kept") != std::string::npos);
  });
}

TEST_CASE(
    "dead letters in the JSON report and in the file: base64 of the item; read_dead_letters reads the file back") {
  isolated("dead letter file items", [] {
    TempDir dir;
    const std::string path = dir.path + "/dead.jsonl";
    const auto r = pf::pipeline("dead file", pf::skip, pf::dead_letters_to(path))
                       .source("n", pf::iota<i64>(0, n))
                       .map("text", [](i64 x) { return "line " + std::to_string(x); })
                       .map(
                           "parse",
                           [](std::string&& s) {  // an rvalue-only function: a copy goes in
                             if (s.ends_with("7")) throw std::invalid_argument("cannot parse '" + s + "'");
                             return s.size();
                           },
                           pf::replicas(2))
                       .reduce("sum", std::size_t{0}, std::plus<>{}, std::plus<>{})
                       .run();
    REQUIRE(!r.report.dead_letters.empty());
    const auto back = pf::read_dead_letters(path);
    REQUIRE(back.size() == r.report.dead_letters.size());
    const nlohmann::json j = nlohmann::json::parse(r.report.to_json());
    REQUIRE(j.at("dead_letters").size() == back.size());
    for (std::size_t i = 0; i < back.size(); ++i) {
      const auto& d = r.report.dead_letters[i];
      REQUIRE(d.item_kept);
      const std::string line = d.decode_item<std::string>();
      CHECK(d.message == "cannot parse '" + line + "'");
      CHECK(back[i].stage == d.stage);
      CHECK(back[i].replica == d.replica);
      CHECK(back[i].item_seq == d.item_seq);
      CHECK(back[i].message == d.message);
      CHECK(back[i].exception_type == "std::invalid_argument");
      CHECK(back[i].item_kept);
      CHECK(back[i].item == d.item);
      CHECK(back[i].decode_item<std::string>() == line);
      const auto& jd = j.at("dead_letters")[i];
      CHECK(jd.at("item").get<std::string>() == pf::faults::base64_encode(d.item));
      CHECK(jd.at("item_bytes").get<std::uint64_t>() == d.item.size());
    }
  });
}

TEST_CASE("an item larger than dead_letter_item_bytes keeps its size only; decode_item names the stage and item") {
  isolated("dead letter too large", [] {
    TempDir dir;
    const std::string path = dir.path + "/dead.jsonl";
    const auto r =
        pf::pipeline("dead large", pf::dead_letters_to(path))
            .source("n", pf::iota<i64>(0, 64))
            .map("blob", [](i64 x) { return std::string(x == 40 ? 100000 : 10, 'a' + static_cast<char>(x % 26)); })
            .map(
                "check",
                [](const std::string& s) {
                  if (s.size() > 1000) throw std::length_error("too long");
                  return s.size();
                },
                pf::replicas(2), pf::skip)
            .reduce("sum", std::size_t{0}, std::plus<>{}, std::plus<>{})
            .run();
    CHECK(r.value == 63 * 10);
    REQUIRE(r.report.dead_letters.size() == 1);
    const auto& d = r.report.dead_letters[0];
    CHECK(!d.item_kept);
    CHECK(d.item.empty());
    CHECK(d.item_bytes == pf::encode_to_bytes(std::string(100000, 'o')).size());
    CHECK(d.item_note.find("larger than dead_letter_item_bytes") != std::string::npos);
    try {
      (void)d.decode_item<std::string>();
      FAIL("decode_item succeeded");
    } catch (const pf::error& e) {
      CHECK(std::string(e.what()).find("stage 'check' item " + std::to_string(d.item_seq)) != std::string::npos);
    }
    const auto back = pf::read_dead_letters(path);
    REQUIRE(back.size() == 1);
    CHECK(!back[0].item_kept);
    CHECK(back[0].item_bytes == d.item_bytes);
    CHECK(back[0].item_note == d.item_note);
  });
}

TEST_CASE("read_dead_letters: a missing file or a bad line is an error naming the file and the line") {
  TempDir dir;
  const std::string path = dir.path + "/dead.jsonl";
  CHECK_THROWS_WITH_AS(pf::read_dead_letters(path), doctest::Contains("dead.jsonl"), pf::system_error);
  {
    std::ofstream f(path);
    f << R"({"stage":"m","replica":0,"item_seq":3,"exception_type":"E","message":"x","item_bytes":3,"item":"Zm9v","item_note":""})"
      << "\n"
      << R"({"stage":"m","replica":0,"item_seq":4,"exception_type":"E","message":"x","item_bytes":3,"item":"Zm9v!","item_note":""})"
      << "\n";
  }
  CHECK_THROWS_WITH_AS(pf::read_dead_letters(path), doctest::Contains("dead.jsonl' line 2: \"item\" is not base64"),
                       pf::error);
}

TEST_CASE("read_dead_letters: a count that is not a non-negative integer in range is refused by name, not converted") {
  // Found by dead_letter_fuzz: "item_bytes":4.4e68 reached an out-of-range float-to-integer conversion
  // (undefined behaviour), and -1 or 1.5 were silently wrapped or truncated.
  TempDir dir;
  const std::string path = dir.path + "/dead.jsonl";
  const auto with = [&](const std::string& field, const std::string& value) {
    std::ofstream f(path);
    std::string line = R"({"stage":"m","replica":0,"item_seq":3,"exception_type":"E","message":"x","item_bytes":3})";
    const auto at = line.find("\"" + field + "\":");
    REQUIRE(at != std::string::npos);
    const auto from = at + field.size() + 3;
    line.replace(from, line.find_first_of(",}", from) - from, value);
    f << line << "\n";
  };
  for (const std::string field : {"item_bytes", "item_seq", "replica"}) {
    for (const std::string value : {"444444444444444444444444444444444444444444444444444444444444444443", "-1", "1.5",
                                    "\"3\"", "1e3"}) {
      CAPTURE(field);
      CAPTURE(value);
      with(field, value);
      CHECK_THROWS_WITH_AS(pf::read_dead_letters(path),
                           doctest::Contains(("dead.jsonl' line 1: \"" + field + "\" is not").c_str()), pf::error);
    }
  }
  with("replica", "4294967296");  // one past a std::uint32_t
  CHECK_THROWS_WITH_AS(pf::read_dead_letters(path), doctest::Contains("\"replica\" is not"), pf::error);
  with("replica", "4294967295");
  CHECK(pf::read_dead_letters(path).at(0).replica == 4294967295u);
}

TEST_CASE("retry with a function that takes its item by value: the retry gets the whole item, not a moved-from one") {
  isolated("retry by value", [] {
    i64 expected = 0;
    std::uint64_t flaky = 0;
    for (i64 x = 0; x < n; ++x) {
      const std::string s = "item " + std::to_string(x);
      expected += static_cast<i64>(s.size());
      flaky += s.ends_with("05") ? 1u : 0u;
    }
    const auto r = pf::pipeline("retry value")
                       .source("n", pf::iota<i64>(0, n))
                       .map("text", [](i64 x) { return "item " + std::to_string(x); })
                       .map(
                           "len",
                           [tried = std::set<std::string>{}](std::string s) mutable {
                             // Fails the first try of the items ending in 05.
                             if (s.ends_with("05") && tried.insert(s).second) throw std::runtime_error("flaky on " + s);
                             return static_cast<i64>(s.size());
                           },
                           pf::replicas(2), pf::retry(2, 0ms))
                       .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
                       .run();
    CHECK(r.value == expected);
    CHECK(r.report.stages[2].retries == flaky);
  });
}
