// Where this process stands in a job that runs one program on several ranks (procflow::mpi:
// every rank of MPI_COMM_WORLD runs main and declares the same pipeline). A file a stage writes
// by name — a writer's output, a reader's reject file — takes the rank into its name there, so
// that two ranks never write, rename onto or truncate the same file (on a file system they
// share, the last rename would win and the other ranks' rows would be lost without a word).
#pragma once

#include <string>

namespace procflow::detail {

struct job_place {
  int rank = 0;
  int ranks = 1;
};

// {0, 1} unless procflow::mpi::environment set it (MPI_COMM_WORLD's rank and size, for its
// lifetime). Replicas inherit it.
void set_job_place(job_place place) noexcept;

// The file this rank writes for `path`: `path` itself in a job of one rank, "<path>.rank<R>" in
// a job of several (each rank's file holds what its own replicas wrote).
std::string path_of_this_rank(const std::string& path);

}  // namespace procflow::detail
