#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "support/isolated.hpp"

#include <atomic>
#include <string>
#include <vector>

namespace procflow::test {
namespace {

// Failed assertions and failure messages of this process, and the test case / subcases being
// run. After fork() the child has its own copy, so run_isolated() can tell whether the checks
// made in the child failed.
std::size_t failed_count = 0;
std::string current_case;
std::vector<std::string> current_subcases;

struct FailureCounter : doctest::IReporter {
  explicit FailureCounter(const doctest::ContextOptions&) {}
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats&) override {}
  void test_case_start(const doctest::TestCaseData& in) override {
    current_case = in.m_name;
    current_subcases.clear();
  }
  void test_case_reenter(const doctest::TestCaseData&) override { current_subcases.clear(); }
  void test_case_end(const doctest::CurrentTestCaseStats&) override {}
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature& in) override { current_subcases.emplace_back(in.m_name.c_str()); }
  void subcase_end() override {
    if (!current_subcases.empty()) current_subcases.pop_back();
  }
  void log_assert(const doctest::AssertData& in) override {
    if (in.m_failed) ++failed_count;
  }
  void log_message(const doctest::MessageData& in) override {
    if (!(in.m_severity & doctest::assertType::is_warn)) ++failed_count;
  }
  void test_case_skipped(const doctest::TestCaseData&) override {}
};

}  // namespace

std::size_t failed_assertions() { return failed_count; }

std::string current_test_name() {
  std::string name = "'" + current_case + "'";
  for (const auto& s : current_subcases) name += " / '" + s + "'";
  return name;
}

}  // namespace procflow::test

DOCTEST_REGISTER_LISTENER("procflow_failure_counter", 1, procflow::test::FailureCounter);
