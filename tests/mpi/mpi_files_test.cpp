// Files a stage writes by name on every rank of an MPI job (detail/job_place.hpp): a writer's
// output and a reader's reject file. Every rank declares the same pipeline with the same paths;
// each rank must write its own file, so that on a file system the ranks share (this machine) no
// rank renames onto another's output or truncates the reject file another appends to.
#include "mpi_main.hpp"
#include "stages/stage_test_support.hpp"

#include <procflow/procflow.hpp>
#include <procflow/stages/csv.hpp>
#include <procflow/stages/writers.hpp>

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace pf = procflow;
namespace pt = procflow::test;
namespace fs = std::filesystem;

namespace {

// A fresh directory every rank sees (rank 0 makes it and tells the others), removed with its
// files once every rank is done with it.
class shared_dir {
 public:
  shared_dir() {
    std::string path;
    if (world_rank() == 0) {
      path = (fs::temp_directory_path() / ("mpi_files." + std::to_string(::getpid()))).string();
      fs::remove_all(path);
      fs::create_directories(path);
    }
    int n = static_cast<int>(path.size());
    MPI_Bcast(&n, 1, MPI_INT, 0, MPI_COMM_WORLD);
    path.resize(static_cast<std::size_t>(n));
    MPI_Bcast(path.data(), n, MPI_CHAR, 0, MPI_COMM_WORLD);
    path_ = path;
  }
  ~shared_dir() {
    MPI_Barrier(MPI_COMM_WORLD);
    std::error_code ec;
    if (world_rank() == 0) fs::remove_all(path_, ec);
  }
  shared_dir(const shared_dir&) = delete;
  shared_dir& operator=(const shared_dir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// The lines of `path` after its header line (which must be `header`).
std::vector<std::string> lines_after_header(const std::string& path, const std::string& header) {
  std::vector<std::string> lines = pt::lines_of(pt::read_text(path));
  if (lines.empty() || lines.front() != header) return {"bad header in " + path + ": " + (lines.empty() ? "" : lines.front())};
  lines.erase(lines.begin());
  return lines;
}

}  // namespace

TEST_CASE("every rank writes its own output file and reject file: none is renamed onto or truncated by another rank") {
  shared_dir dir;
  const std::string input = dir.path() + "/in.csv";
  std::string text = "k,v\n";
  std::vector<std::string> good;                // the output's rows, as written
  std::vector<std::vector<std::string>> bad;     // file, line, column, text
  for (int i = 0; i < 40'000; ++i) {
    const std::string k = std::to_string(i);
    std::string line = k + "," + std::to_string(i * 7);
    if (i % 97 == 0) {
      line = k + ",\"x\"y";  // text after a closing quote
      bad.push_back({input, std::to_string(i + 2), "2", line});
    } else {
      good.push_back(line);
    }
    text += line + "\n";
  }
  if (world_rank() == 0) {
    std::ofstream(input, std::ios::binary) << text;
  }
  MPI_Barrier(MPI_COMM_WORLD);

  pf::stages::csv_options o;
  o.block_bytes = 4096;  // ~100 blocks, claimed by the ranks as they go
  o.reject_file = dir.path() + "/rejects.csv";
  // The sink in each rank's calling process (the default), then with replicas(2) in each rank's
  // reader processes: each rank's replicas append to that rank's one file, committed by the rank.
  for (const bool replicated : {false, true}) {
    CAPTURE(replicated);
    const std::string output = dir.path() + (replicated ? "/out2.csv" : "/out.csv");
    auto rows = pf::pipeline("files", pf::skip)
                    .source("rows", pf::stages::csv_rows(input, o))
                    .map("kv", [](const pf::stages::csv_row& row) { return std::pair{row.get<std::string>("k"), row.get<std::int64_t>("v")}; });
    pf::mpi::run(replicated ? rows.sink("write", pf::stages::csv_writer(output, {"k", "v"}), pf::replicas(2))
                            : rows.sink("write", pf::stages::csv_writer(output, {"k", "v"})));
    MPI_Barrier(MPI_COMM_WORLD);

    if (world_rank() == 0) {
      CHECK_FALSE(fs::exists(output));         // no rank writes the shared name
      CHECK_FALSE(fs::exists(o.reject_file));
      std::vector<std::string> written;
      std::vector<std::vector<std::string>> rejects;
      for (int rank = 0; rank < world_size(); ++rank) {
        CAPTURE(rank);
        const std::string suffix = ".rank" + std::to_string(rank);
        REQUIRE(fs::exists(output + suffix));  // written (with its header) even without rows
        for (std::string& row : lines_after_header(output + suffix, "k,v")) written.push_back(std::move(row));
        REQUIRE(fs::exists(o.reject_file + suffix));
        for (auto& r : pt::reject_records(o.reject_file + suffix, "file,line,column,error,text", 3)) rejects.push_back(std::move(r));
      }
      CHECK(pt::sorted(written) == pt::sorted(good));  // every good row once, in one rank's file
      CHECK(pt::sorted(rejects) == pt::sorted(bad));   // every bad row once, in one rank's file
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
}
