// requests on stdin -> started pool (count primes <= n, real CPU work) -> answers on stdout, in order
//
//   request_pool [--replicas N] [--help]
//
// A line-protocol service: each input line "ID N" asks for the number of primes <= N (0 <= N <= 10^8,
// trial division: a few microseconds to milliseconds of CPU per request); the answer line is
// "ID COUNT", or "ID error: MESSAGE" for a request the stage refused (the pool keeps serving). The
// pool is started once (pf::serve ... start(): N replicas kept warm), every request is a submit()
// and its future is answered as soon as it and every earlier one are ready (answers come in request
// order, written as they are ready). End of input: the pool finishes, the report goes to stderr.
// tests/examples runs it under examples/request_pool/loadgen.py, which checks every answer and
// measures the latency distribution against request_pool.py (the same service on Python's
// ProcessPoolExecutor).
#include <procflow/procflow.hpp>

#include <fmt/core.h>

#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <future>
#include <iostream>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>

namespace pf = procflow;

namespace {

struct request {
  std::string id;
  std::string text;
};

std::int64_t count_primes(std::int64_t n) {
  std::int64_t count = 0;
  for (std::int64_t k = 2; k <= n; ++k) {
    bool prime = true;
    for (std::int64_t d = 2; d * d <= k; ++d)
      if (k % d == 0) {
        prime = false;
        break;
      }
    count += prime;
  }
  return count;
}

// "N" -> the prime count; refuses what is not a number in range (that request's future fails).
std::int64_t answer(const std::string& text) {
  std::size_t used = 0;
  const long long n = std::stoll(text, &used);  // throws std::invalid_argument / out_of_range
  if (used != text.size() || n < 0 || n > 100'000'000) throw std::out_of_range("N must be an integer in [0, 1e8], got '" + text + "'");
  return count_primes(n);
}

int usage(int status) {
  std::fputs("usage: request_pool [--replicas N]   (lines \"ID N\" on stdin -> \"ID COUNT\" on stdout)\n", status ? stderr : stdout);
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  std::uint32_t replicas = std::max(1u, std::thread::hardware_concurrency());
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") return usage(0);
    if (a == "--replicas" && i + 1 < argc) {
      replicas = static_cast<std::uint32_t>(std::max(1, std::atoi(argv[++i])));
    } else {
      return usage(2);
    }
  }
  try {
    // Started before any thread of ours exists (the fork rule).
    auto pool = pf::serve<std::string>("request_pool").map("count_primes", answer, pf::replicas(replicas)).start();

    // The writer answers in request order: a queue of (id, future) from the reader.
    std::mutex mutex;
    std::condition_variable ready;
    std::deque<std::pair<std::string, std::future<std::int64_t>>> queue;
    bool done = false;
    std::thread writer([&] {
      for (;;) {
        std::unique_lock lock(mutex);
        ready.wait(lock, [&] { return !queue.empty() || done; });
        if (queue.empty()) return;
        auto [id, future] = std::move(queue.front());
        queue.pop_front();
        const bool more = !queue.empty();
        lock.unlock();
        try {
          std::printf("%s %lld\n", id.c_str(), static_cast<long long>(future.get()));
        } catch (const pf::stage_error& e) {
          std::printf("%s error: %s\n", id.c_str(), e.message().c_str());
        } catch (const std::exception& e) {
          std::printf("%s error: %s\n", id.c_str(), e.what());
        }
        if (!more) std::fflush(stdout);  // nothing else ready to batch with: hand it on now
      }
    });

    std::string line;
    while (std::getline(std::cin, line)) {
      const auto space = line.find(' ');
      std::string id = line.substr(0, space);
      std::string text = space == std::string::npos ? std::string() : line.substr(space + 1);
      auto future = pool.submit(std::move(text));
      {
        std::lock_guard lock(mutex);
        queue.emplace_back(std::move(id), std::move(future));
      }
      ready.notify_one();
    }
    {
      std::lock_guard lock(mutex);
      done = true;
    }
    ready.notify_one();
    writer.join();
    std::fflush(stdout);
    const pf::run_report report = pool.wait();
    fmt::print(stderr, "{}\n", report);
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "request_pool: {}\n", e.what());
    return 1;
  }
}
