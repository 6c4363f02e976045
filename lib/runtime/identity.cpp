#include "runtime/identity.hpp"

#include <procflow/detail/bad_input.hpp>
#include <procflow/detail/job_place.hpp>
#include <procflow/replica.hpp>

#include <unistd.h>

#include <bit>
#include <memory>
#include <string>
#include <vector>

namespace procflow::runtime {

namespace {

// SplitMix64's finalizer: a bijective mix, so distinct inputs give distinct seeds.
constexpr std::uint64_t mix64(std::uint64_t z) noexcept {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Process-wide, not thread-local: a stage's own threads see their replica too.
Identity current;
// Replica engines of this process, one per stage, made on first use.
std::vector<std::unique_ptr<std::mt19937_64>> engines;
// Thread mode: the stage instance this worker thread runs now (null: the process's identity).
thread_local ThreadIdentity* worn = nullptr;

}  // namespace

const Identity& identity() noexcept { return worn ? worn->id : current; }

ThreadIdentity* worn_thread_identity() noexcept { return worn; }

ThreadIdentityScope::ThreadIdentityScope(ThreadIdentity& t) noexcept : saved_(worn) { worn = &t; }
ThreadIdentityScope::~ThreadIdentityScope() { worn = saved_; }

namespace {
// The engines of whoever the calling thread is.
std::vector<std::unique_ptr<std::mt19937_64>>& current_engines() noexcept { return worn ? worn->engines : engines; }
}  // namespace

void set_identity(const Identity& id) noexcept {
  current = id;
  engines.clear();
}

void clear_identity() noexcept { set_identity(Identity{}); }

void set_identity_stage(std::size_t stage) noexcept { current.stage = stage; }

std::uint64_t replica_seed(std::uint64_t run_seed, std::size_t stage, std::uint32_t index) noexcept {
  return mix64(mix64(mix64(run_seed) ^ stage) ^ (std::uint64_t{index} << 1 | 1));
}

}  // namespace procflow::runtime

namespace procflow::detail {

namespace {
job_place current_place;
}

void set_job_place(job_place place) noexcept { current_place = place; }

std::string path_of_this_rank(const std::string& path) {
  if (current_place.ranks <= 1) return path;
  return path + ".rank" + std::to_string(current_place.rank);
}

bool running_stage_skips() noexcept {
  const runtime::Identity& current = runtime::identity();
  if (!current.def || current.stage >= current.def->stages.size()) return false;
  const auto& own = current.def->stages[current.stage]->options().on_error;
  const auto& policy = own ? own : current.def->options.defaults.on_error;
  return policy && policy->then_skip;
}

}  // namespace procflow::detail

namespace procflow {

replica_info this_replica() noexcept {
  const runtime::Identity& current = runtime::identity();
  replica_info r;
  r.pid = static_cast<std::int32_t>(::getpid());
  if (!current.def) return r;
  r.in_run = true;
  r.stage_index = static_cast<std::uint32_t>(current.stage);
  if (current.stage < current.def->stages.size()) r.stage = current.def->stages[current.stage]->name();
  r.index = current.index;
  r.replicas = current.replicas;
  if (current.active) {
    // Relaxed: a momentary count for the user, nothing is published through it.
    const int n = std::popcount(current.active->load(std::memory_order_relaxed) & current.lanes);
    if (n > 0) r.replicas = static_cast<std::uint32_t>(n);
  }
  r.run_seed = current.run_seed;
  r.seed = runtime::replica_seed(current.run_seed, current.stage, current.index);
  r.in_supervisor = current.in_supervisor;
  return r;
}

std::mt19937_64& replica_engine() {
  const runtime::Identity& current = runtime::identity();
  auto& engines = runtime::current_engines();
  const std::size_t stage = current.stage;
  if (engines.size() <= stage) engines.resize(stage + 1);
  if (!engines[stage]) {
    const std::uint64_t seed = current.def ? runtime::replica_seed(current.run_seed, stage, current.index)
                                           : (std::uint64_t{std::random_device{}()} << 32) ^ std::random_device{}();
    engines[stage] = std::make_unique<std::mt19937_64>(seed);
  }
  return *engines[stage];
}

std::uint64_t stream_key(std::uint64_t run_seed, std::uint32_t stage_index) noexcept {
  // The constant keeps keys apart from replica_seed()'s values for the same inputs.
  return runtime::mix64(runtime::mix64(run_seed ^ 0x5851F42D4C957F2Dull) ^ stage_index);
}

std::uint64_t stage_stream_key() noexcept {
  const runtime::Identity& current = runtime::identity();
  return stream_key(current.run_seed, static_cast<std::uint32_t>(current.stage));
}

}  // namespace procflow
