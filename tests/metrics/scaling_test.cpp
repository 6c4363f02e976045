// Checks procflow::study_scaling (include/procflow/scaling.hpp): a point per budget 1..N with
// speedup = sequential / wall and efficiency = speedup / cores, predicted points beyond N from the
// Amdahl fit, and the JSON and SVG outputs. Wall times are not asserted (the machine may be loaded);
// the arithmetic and the shape are.
#include <procflow/procflow.hpp>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <set>

namespace pf = procflow;
using i64 = std::int64_t;

TEST_CASE("a scaling study gives speedup and efficiency per budget and predictions beyond") {
  std::set<std::uint32_t> budgets;
  auto spin = [] {
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
    while (std::chrono::steady_clock::now() < until) {
    }
  };
  const auto study = pf::study_scaling(
      2,
      [&] {
        for (int i = 0; i < 1'000; ++i) spin();
      },
      [&](std::uint32_t n) {
        budgets.insert(n);
        return pf::pipeline("scaled", pf::batch_bytes(256))
            .source("numbers", pf::iota<i64>(0, 1'000))
            .map("spin", [&](i64 x) {
              spin();
              return x;
            }, pf::replicas(n))
            .reduce("sum", i64{0}, std::plus<>{}, std::plus<>{})
            .run()
            .report;
      });
  CHECK(budgets == std::set<std::uint32_t>{1, 2});
  REQUIRE(study.points.size() == 4);  // 1, 2 measured; 4, 8 predicted
  CHECK(study.sequential_s >= 0.05);
  constexpr std::uint32_t want_cores[] = {1, 2, 4, 8};
  for (std::size_t i = 0; i < study.points.size(); ++i) {
    const auto& p = study.points[i];
    CHECK(p.predicted == (i >= 2));
    CHECK(p.cores == want_cores[i]);
    CHECK(p.wall_s > 0);
    CHECK(p.speedup == doctest::Approx(study.sequential_s / p.wall_s));
    CHECK(p.efficiency == doctest::Approx(p.speedup / p.cores));
  }
  CHECK(study.points[0].bottleneck == "spin");
  CHECK(study.serial_fraction >= 0);
  CHECK(study.serial_fraction <= 1);
  // Amdahl: more cores never predict less speedup.
  CHECK(study.points[3].speedup >= study.points[2].speedup);
  const auto j = nlohmann::json::parse(study.to_json());
  CHECK(j.at("points").size() == 4);
  CHECK(j["points"][3].at("predicted") == true);
  const std::string svg = study.to_svg();
  CHECK(svg.rfind("<svg", 0) == 0);
  CHECK(svg.find("<polyline") != std::string::npos);
  CHECK(study.to_string().find("(predicted)") != std::string::npos);
}
