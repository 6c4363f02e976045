#include "metrics/sampler.hpp"

#include "metrics/replica_stats.hpp"

#include <fmt/format.h>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <stdexcept>

namespace procflow::metrics {

namespace {

double seconds(std::uint64_t ns) { return static_cast<double>(ns) / 1e9; }

std::string rate_text(double r) {
  if (r >= 1e6) return fmt::format("{:.2f}M/s", r / 1e6);
  if (r >= 1e3) return fmt::format("{:.1f}k/s", r / 1e3);
  return fmt::format("{:.0f}/s", r);
}

std::uint32_t ring_used(const channel::Channel& c) {
  std::uint64_t used = 0;
  for (std::uint32_t p = 0; p < c.producers(); ++p)
    for (std::uint32_t q = 0; q < c.consumers(); ++q) {
      const channel::RingView v = c.ring(p, q);
      // Relaxed: an observer; the two indices may be from slightly different moments, so the
      // difference is clamped to the ring's size.
      const std::uint64_t tail = v.shared->tail.load(std::memory_order_relaxed);
      const std::uint64_t head = v.shared->head.load(std::memory_order_relaxed);
      used += tail > head ? std::min<std::uint64_t>(tail - head, v.geometry.slot_count) : 0;
    }
  return static_cast<std::uint32_t>(used);
}

}  // namespace

Sampler::Sampler(const detail::pipeline_def& def, const runtime::Plan& plan, const runtime::RunState& state)
    : def_(def), plan_(plan), state_(state), options_(def.options.profile),
      interval_(std::max<std::int64_t>(1, options_.sample_interval_ns / 1'000'000)) {
  using mode = profile_options::progress_mode;
  if (!options_.counters) {
    // counters_off (profile.hpp): nothing live to sample; refuse what would need it.
    const auto refuse = [&](const char* what) {
      throw std::invalid_argument(
          fmt::format("procflow: pipeline '{}': counters_off cannot be combined with {} (it needs the live counters)", def.name, what));
    };
    for (const runtime::Group& g : plan.groups)
      if (g.scalable) refuse("auto_scale");
    if (!options_.trace_path.empty()) refuse("trace");
    if (options_.progress != mode::off) refuse("progress");
    if (options_.on_progress) refuse("on_progress");
    interval_ = std::chrono::milliseconds(1000);
    return;
  }
  print_ = options_.progress == mode::always || (options_.progress == mode::terminal && ::isatty(STDERR_FILENO) == 1);
}

void Sampler::start(std::uint64_t run_start_ns) {
  run_start_ns_ = run_start_ns;
  next_ns_ = run_start_ns + static_cast<std::uint64_t>(options_.sample_interval_ns);
}

run_sample Sampler::take(double time_s) const {
  run_sample s;
  s.time_s = time_s;
  s.stages.resize(def_.stages.size());
  for (std::size_t i = 0; i < def_.stages.size(); ++i) {
    const std::uint32_t g = plan_.stage_group[i];
    if (g >= plan_.groups.size()) continue;  // runs in the supervisor
    stage_sample& out = s.stages[i];
    for (std::uint32_t k = 0; k < plan_.groups[g].slots; ++k) {
      // Relaxed: see StageCounters (single writer, independent values).
      const runtime::StageCounters& c = state_.counters(i, k);
      out.items_in += c.items_in.load(std::memory_order_relaxed);
      out.items_out += c.items_out.load(std::memory_order_relaxed);
      out.busy_s += seconds(c.busy_ns.load(std::memory_order_relaxed));
      out.starved_s += seconds(c.starved_ns.load(std::memory_order_relaxed));
      out.blocked_s += seconds(c.blocked_ns.load(std::memory_order_relaxed));
    }
    if (i == 0 && out.items_in == 0) out.items_in = out.items_out;
  }
  // A terminal in the supervisor takes what the stage before it put out.
  if (def_.stages.size() >= 2 && plan_.stage_group.back() >= plan_.groups.size()) {
    auto& last = s.stages.back();
    last.items_in = last.items_out = s.stages[s.stages.size() - 2].items_out;
  }
  for (std::size_t g = 0; g + 1 < plan_.groups.size(); ++g) s.ring_slots_used.push_back(ring_used(state_.input_of(g + 1)));
  if (plan_.has_results) s.ring_slots_used.push_back(ring_used(state_.results()));
  s.counters = sum_user_counters(def_, plan_, state_);
  return s;
}

void Sampler::tick() {
  if (!options_.counters) return;
  const std::uint64_t now = steady_now_ns();
  if (now < next_ns_) return;
  next_ns_ = now + static_cast<std::uint64_t>(options_.sample_interval_ns);
  samples_.push_back(take(seconds(now - run_start_ns_)));
  on_sample();
}

void Sampler::on_sample() {
  if (!print_ && !options_.on_progress) return;
  const run_sample& cur = samples_.back();
  const run_sample* prev = samples_.size() >= 2 ? &samples_[samples_.size() - 2] : nullptr;
  progress_snapshot p;
  p.time_s = cur.time_s;
  p.sample = cur;
  const double dt = prev ? cur.time_s - prev->time_s : cur.time_s;
  double best = -1;
  for (std::size_t i = 0; i < def_.stages.size(); ++i) {
    p.stage_names.push_back(def_.stages[i]->name());
    const stage_sample& s = cur.stages[i];
    const std::uint64_t out0 = prev ? prev->stages[i].items_out : 0;
    p.items_per_s.push_back(dt > 0 ? static_cast<double>(s.items_out - std::min(out0, s.items_out)) / dt : 0);
    const std::uint32_t g = plan_.stage_group[i];
    if (g >= plan_.groups.size()) continue;
    const double busy = s.busy_s - (prev ? prev->stages[i].busy_s : 0);
    const double load = busy / std::max<std::uint32_t>(1, plan_.groups[g].replicas);
    if (load > best) {
      best = load;
      p.bottleneck = def_.stages[i]->name();
    }
  }
  // ETA from the share of a splittable source done so far.
  const detail::source_base* src = def_.stages.front()->source();
  if (src && src->splittable() && src->size() > 0 && cur.time_s > 0) {
    double done = 0;
    if (src->units_are_items()) {
      done = static_cast<double>(cur.stages.front().items_out) / static_cast<double>(src->size());
    } else if (plan_.chunks > 0) {
      // Relaxed: see RunHeader::next_chunk (an observer here).
      const std::uint64_t claimed = state_.header().next_chunk.load(std::memory_order_relaxed);
      done = static_cast<double>(std::min(claimed, plan_.chunks)) / static_cast<double>(plan_.chunks);
    }
    if (done > 0) p.eta_s = std::max(0.0, cur.time_s * (1 - std::min(done, 1.0)) / done);
  }
  if (options_.on_progress) options_.on_progress(p);
  if (print_) {
    std::string line = progress_line(p);
    const std::size_t width = line.size();
    if (width < line_width_) line.append(line_width_ - width, ' ');
    line_width_ = width;
    std::fputc('\r', stderr);
    std::fputs(line.c_str(), stderr);
    std::fflush(stderr);
  }
}

std::string Sampler::progress_line(const progress_snapshot& p) const {
  std::string line = fmt::format("[{}] {:.1f}s", def_.name, p.time_s);
  for (std::size_t i = 0; i < p.stage_names.size(); ++i) line += fmt::format(" | {} {}", p.stage_names[i], rate_text(p.items_per_s[i]));
  if (!p.bottleneck.empty()) line += fmt::format(" | bottleneck {}", p.bottleneck);
  if (p.eta_s >= 0) line += fmt::format(" | ETA {:.0f}s", p.eta_s);
  return line;
}

void Sampler::finish(run_report& report) {
  if (options_.counters) samples_.push_back(take(report.wall_s));
  if (print_ && line_width_ > 0) {
    std::fputc('\r', stderr);
    std::fputs(std::string(line_width_, ' ').c_str(), stderr);
    std::fputc('\r', stderr);
    std::fflush(stderr);
  }
  report.samples = std::move(samples_);
}

}  // namespace procflow::metrics
