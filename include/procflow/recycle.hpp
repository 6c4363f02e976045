// recycle: replace a replica of a stage by a fresh process after it has taken a number of items,
// or once its resident memory passes a limit — Python's maxtasksperchild, Celery's
// worker_max_memory_per_child, gunicorn's max_requests — for stages that leak or fragment memory.
//
//   .map("parse", parse, pf::recycle::after_items(100'000))
//   .map("render", render, pf::recycle::above_rss(512 << 20))   // bytes, checked after every batch
//
// The replica finishes its batch, runs its teardown (every stage callable's finish(), then its
// destruction; a reduce sends its partial) and exits; a new process takes its slot (the same
// rings: nothing in them is lost or read twice), runs the per_replica factories again and goes on
// with the next batch. stage_report::recycles counts them. Ordered, a ring-fed replica leaves
// between batches and its replacement reads on at the batch it expected next. Not in thread mode
// or on a generate() source in its own process: run() refuses them.
#pragma once

#include <cstdint>
#include <stdexcept>

namespace procflow {

struct recycle {
  static recycle after_items(std::uint64_t n) {
    if (n == 0) throw std::invalid_argument("procflow::recycle::after_items: need at least 1 item");
    recycle r;
    r.items = n;
    return r;
  }
  static recycle above_rss(std::uint64_t bytes) {
    if (bytes == 0) throw std::invalid_argument("procflow::recycle::above_rss: the limit must be positive");
    recycle r;
    r.rss_bytes = bytes;
    return r;
  }
  std::uint64_t items = 0;      // 0: no item limit
  std::uint64_t rss_bytes = 0;  // 0: no memory limit
};

}  // namespace procflow
