// A guard for fork-based test cases: when it goes out of scope, the case must have left no child
// process (zombies included) and /dev/shm as it found it — also when the case failed part-way.
#pragma once

#include "support/child_process.hpp"

#include <doctest/doctest.h>

#include <set>
#include <string>

namespace procflow::test {

struct CleanupCheck {
  std::set<std::string> shm = dev_shm_entries();
  CleanupCheck() = default;
  CleanupCheck(const CleanupCheck&) = delete;
  CleanupCheck& operator=(const CleanupCheck&) = delete;
  ~CleanupCheck() {
    CHECK(count_children() == 0);
    CHECK(dev_shm_entries() == shm);
  }
};

}  // namespace procflow::test
