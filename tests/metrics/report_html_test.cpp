// Checks run_report::to_html(): one self-contained page (no script, no external reference)
// naming the bottleneck, with the table and the SVG charts; and, where Debian's chromium is
// installed, that it renders headless into a non-blank screenshot without errors.
#include "support/child_process.hpp"

#include <procflow/procflow.hpp>

#include <doctest/doctest.h>

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace pf = procflow;
namespace fs = std::filesystem;
using i64 = std::int64_t;

namespace {

void spin_us(int us) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
  while (std::chrono::steady_clock::now() < until) {
  }
}

pf::run_report sample_report() {
  return pf::pipeline("html <&> report", pf::batch_bytes(256), pf::sample_every(std::chrono::milliseconds(10)), pf::fusion(false))
      .source("numbers", pf::iota<i64>(0, 3'000))
      .map("slow<stage>", [](i64 x) {
        spin_us(100);
        return x;
      })
      .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
      .run()
      .report;
}

std::string find_chromium() {
  for (const char* p : {"/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"})
    if (fs::exists(p)) return p;
  return {};
}

}  // namespace

TEST_CASE("the HTML report is one self-contained page with the verdict, the charts and the table") {
  const auto report = sample_report();
  const std::string html = report.to_html();
  CHECK(html.rfind("<!DOCTYPE html>", 0) == 0);
  CHECK(html.find("<script") == std::string::npos);
  CHECK(html.find("http://") == html.find("http://www.w3.org/2000/svg"));  // only the SVG namespace
  CHECK(html.find("https://") == std::string::npos);
  CHECK(html.find("<link") == std::string::npos);
  CHECK(html.find("@import") == std::string::npos);
  CHECK(html.find("Bottleneck: <b>slow&lt;stage&gt;</b>") != std::string::npos);
  CHECK(html.find("html &lt;&amp;&gt; report") != std::string::npos);
  CHECK(html.find("<polyline") != std::string::npos);  // throughput over time
  CHECK(html.find("<rect") != std::string::npos);      // time shares
  CHECK(html.find("replica (stages)") != std::string::npos);  // the per-replica table
  CHECK(html.find("</html>") != std::string::npos);
}

TEST_CASE("the HTML report renders in headless chromium") {
  const std::string chromium = find_chromium();
  if (chromium.empty()) {
    MESSAGE("SKIPPED: chromium is not installed (apt-get install chromium); the render check did not run");
    return;
  }
  const fs::path dir = fs::temp_directory_path() / fmt::format("procflow_html_{}", ::getpid());
  fs::create_directories(dir);
  const fs::path page = dir / "report.html", shot = dir / "shot.png", log = dir / "log.txt";
  std::ofstream(page) << sample_report().to_html();
  const std::string cmd = fmt::format(
      "timeout 120 {} --headless --no-sandbox --disable-gpu --user-data-dir={} --enable-logging=stderr --v=0 "
      "--window-size=1000,900 --screenshot={} file://{} > {} 2>&1",
      chromium, (dir / "profile").string(), shot.string(), page.string(), log.string());
  const int rc = std::system(cmd.c_str());
  std::stringstream text;
  text << std::ifstream(log).rdbuf();
  INFO(text.str());
  CHECK(rc == 0);
  REQUIRE(fs::exists(shot));
  // A blank 1000x900 PNG compresses to a few KB; the page with its charts and table does not.
  CHECK(fs::file_size(shot) > 20'000);
  CHECK(text.str().find("Uncaught") == std::string::npos);
  CHECK(text.str().find(":CONSOLE(") == std::string::npos);  // console messages (script errors) of the page
  fs::remove_all(dir);
}
