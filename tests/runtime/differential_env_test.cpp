// Checks SPEC §2/§4 against the host program's process setup: the random pipelines of
// differential_core_test (int64 and string items) run in a child that first changes what a host
// program commonly changes, a random combination of
//   - SIGCHLD ignored (children are reaped by the kernel), or SIGCHLD handled by a handler that
//     reaps every child (common in servers);
//   - a SIGINT handler installed (the replicas must not inherit it: they ignore SIGINT and leave
//     Ctrl-C to the supervisor; every stage checks it);
//   - std::ios::sync_with_stdio(false), with the terminal a sink writing every item with
//     std::cout (fd 1 redirected to a file): every line must arrive.
// and must still agree with the sequential loop. See differential_support.hpp.
#include "runtime/differential_support.hpp"

#include <signal.h>
#include <sys/wait.h>

namespace {

using namespace difftest;

enum class Sigchld { untouched, ignored, reaped };

struct Environment {
  Sigchld sigchld = Sigchld::untouched;
  bool sigint_handler = false;
  bool unsynced_streams = false;
};

std::string describe(const Environment& env) {
  std::string d;
  d += env.sigchld == Sigchld::ignored ? "SIGCHLD ignored" : env.sigchld == Sigchld::reaped ? "SIGCHLD reaped by a handler" : "SIGCHLD default";
  if (env.sigint_handler) d += ", a SIGINT handler";
  if (env.unsynced_streams) d += ", sync_with_stdio(false) and a std::cout sink";
  return d;
}

volatile sig_atomic_t interrupted = 0;
void on_sigint(int) { interrupted = 1; }
void reap_all(int) {
  const int saved = errno;
  while (::waitpid(-1, nullptr, WNOHANG) > 0) {
  }
  errno = saved;
}

void install(const Environment& env) {
  struct sigaction sa {};
  ::sigemptyset(&sa.sa_mask);
  if (env.sigchld == Sigchld::ignored) {
    sa.sa_handler = SIG_IGN;
    ::sigaction(SIGCHLD, &sa, nullptr);
  } else if (env.sigchld == Sigchld::reaped) {
    sa.sa_handler = reap_all;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    ::sigaction(SIGCHLD, &sa, nullptr);
  }
  if (env.sigint_handler) {
    struct sigaction si {};
    ::sigemptyset(&si.sa_mask);
    si.sa_handler = on_sigint;
    ::sigaction(SIGINT, &si, nullptr);
  }
  if (env.unsynced_streams) std::ios::sync_with_stdio(false);
}

// fd 1 redirected to a file for the duration of one run (the child's own descriptors).
class StdoutToFile {
 public:
  StdoutToFile() : path_(std::filesystem::temp_directory_path() / fmt::format("procflow_diff_cout_{}.txt", ::getpid())) {
    std::cout.flush();
    saved_ = ::dup(1);
    const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600);
    REQUIRE(fd >= 0);
    ::dup2(fd, 1);
    ::close(fd);
  }
  ~StdoutToFile() {
    std::cout.flush();
    ::dup2(saved_, 1);
    ::close(saved_);
    std::error_code ec;
    std::filesystem::remove(path_, ec);
  }
  std::vector<std::uint64_t> read_back() {
    std::cout.flush();
    std::ifstream in(path_);
    std::vector<std::uint64_t> got;
    for (std::uint64_t x = 0; in >> std::hex >> x;) got.push_back(x);
    std::sort(got.begin(), got.end());
    return got;
  }

 private:
  std::filesystem::path path_;
  int saved_ = -1;
};

// Run by every chain stage (in the replicas): the host's SIGINT handler must not be inherited.
// A replica ignores SIGINT (a Ctrl-C to the whole process group is the supervisor's to handle: it
// stops every replica and throws procflow::interrupted; see termination_test). Checked once per
// process.
void sigint_is_default() {
  static bool checked = false;
  if (checked) return;
  checked = true;
  struct sigaction now {};
  ::sigaction(SIGINT, nullptr, &now);
  if (now.sa_handler != SIG_IGN)
    throw std::runtime_error(now.sa_handler == SIG_DFL ? "a replica does not ignore SIGINT: Ctrl-C to the group would kill it behind the supervisor's back"
                                                       : "a replica inherited the host's SIGINT handler: Ctrl-C would not stop it");
}

using CaseFn = void (*)(Rng&, std::uint64_t, const Features&);
constexpr CaseFn cases[] = {&run_case<i64, i64>, &run_case<std::string, std::string>, &run_case<i64, std::string>};

void run_seed(std::uint64_t seed) {
  Rng rng(seed ^ 0xe7e7);
  Environment env;
  env.sigchld = static_cast<Sigchld>(std::uniform_int_distribution<int>(0, 2)(rng));
  env.sigint_handler = chance(rng, 0.5);
  env.unsynced_streams = chance(rng, 0.4);
  INFO("environment: ", describe(env));
  install(env);
  Features features;
  features.cout_sink = env.unsynced_streams;
  features.faults = !env.unsynced_streams;  // a cout sink's output is checked only after a complete run
  if (env.sigint_handler) features.stage_probe = sigint_is_default;
  Rng pipeline_rng(seed);
  const auto pick = std::uniform_int_distribution<std::size_t>(0, std::size(cases) - 1)(pipeline_rng);
  std::optional<StdoutToFile> redirect;
  if (env.unsynced_streams) redirect.emplace();
  cout_sink_expected().assign(1, ~std::uint64_t{0});  // marker: no cout sink in this pipeline
  cases[pick](pipeline_rng, seed, features);
  if (redirect && !(cout_sink_expected().size() == 1 && cout_sink_expected()[0] == ~std::uint64_t{0})) {
    const auto got = redirect->read_back();
    CHECK(got.size() == cout_sink_expected().size());
    CHECK(got == cout_sink_expected());
  }
  CHECK(interrupted == 0);
}

}  // namespace

TEST_CASE("random pipelines agree with a sequential loop whatever the host did to signals and streams") {
  run_seeds(seeds_for("differential_env", 0xe4e0000, 200, 50), run_seed);
}
