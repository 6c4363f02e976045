// procflow::stages input resolution: what a reader's `input` argument names, and how a set of
// plain files is cut into byte blocks that replicas claim (the unit of a splittable reader).
//
//   "data.csv"        one file
//   "logs/"           every regular file under the directory, recursively, sorted by path
//   "logs/*.txt"      a glob(3) pattern (sorted; no match is an error)
//   "-"               standard input (read in the source's own process)
//   "x.gz"            gzip-compressed (zlib; read in the source's own process)
//
// The input is resolved when the reader is declared (before run() forks), so a missing file is
// a procflow::system_error naming it, thrown by the declaration.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace procflow::stages {

// Default block size: 256 KiB of a file per claimed chunk (a line belongs to the block it starts in).
// A block becomes one batch of items that the replica's next stages take at once: at 256 KiB the
// batch a block parses into (strings and field offsets, ~5x the block's bytes for short CSV rows)
// is still in the core's caches when the stage folds it; 1 MiB blocks had it read back from memory
// (median of 11 alternated runs, 2 replicas ÷ a sequential loop: geoip_etl 1.20 -> 1.39x,
// word_count 1.62 -> 1.72x; etl_reader_bench csv_rows 0.145-0.155 -> 0.117-0.144 s).
inline constexpr std::uint64_t default_block_bytes = std::uint64_t{256} << 10;

// The longest line text a reject record keeps (csv_options::reject_file, record_options::reject_file).
// Under procflow::mpi with several ranks each rank keeps its own reject file, "<reject_file>.rank<R>"
// (R its rank in MPI_COMM_WORLD), created with the header when the run starts on the rank (so a
// reader declared before procflow::mpi::environment gets its rank's name too) and holding the
// rows its replicas set aside: no rank truncates the file another appends to.
// Under pf::restart a replacement reads its dead predecessor's block (or a source process's
// stream) again, and sets aside only what the predecessor had not: each bad row is one reject
// record, one count in the reader's counter and one dead letter (a replica killed between a
// record's write(2) and noting it leaves that one record to be written again, never lost).
inline constexpr std::size_t reject_text_bytes = std::size_t{64} << 10;

struct input_file {
  std::string path;        // as resolved ("-" for stdin)
  std::uint64_t size = 0;  // bytes when the input was declared (plain files)
  bool plain = true;       // false: stdin or gzip, read sequentially in a source process
  std::uint32_t id = 0;    // index in the process-wide name table (detail::file_name)
};

// Resolves an input spec into its files. Throws procflow::system_error / procflow::error naming
// the path when nothing can be read.
std::vector<input_file> resolve_input(const std::string& spec);

namespace detail {

// A resolved input cut into blocks: block b of the set is bytes [begin, end) of one file.
class input_set {
 public:
  input_set(const std::string& spec, std::uint64_t block_bytes);

  struct block {
    const input_file* file;
    std::uint64_t begin;
    std::uint64_t end;
  };

  const std::vector<input_file>& files() const noexcept { return files_; }
  // True when every file is plain (replicas can read byte ranges of it).
  bool splittable() const noexcept { return splittable_; }
  std::uint64_t blocks() const noexcept { return first_block_.empty() ? 0 : first_block_.back(); }
  block at(std::uint64_t b) const;
  std::uint64_t block_bytes() const noexcept { return block_bytes_; }

 private:
  std::vector<input_file> files_;
  std::vector<std::uint64_t> first_block_;  // prefix sums: blocks before file i+1
  std::uint64_t block_bytes_;
  bool splittable_ = true;
};

// Process-wide table of input file names: items carry a 4-byte id instead of the path. Filled
// when readers are declared, so every replica forked afterwards knows every id.
std::uint32_t register_file_name(const std::string& path);
const std::string& file_name(std::uint32_t id);

// The 1-based line number of the byte at `offset` of a plain file (0 if it cannot be opened). Counts
// newlines, cached per process: each 1 MiB piece of a file's prefix is counted once, and the
// rest from the nearest of the piece's start and the last few answers. So a reader setting aside
// bad row after bad row of its block counts each byte at most twice (once for its piece's
// count, once between two answers), not half a piece per row.
std::uint64_t line_at(std::uint32_t file_id, std::uint64_t offset);
// Bytes line_at() has counted in this process (what a test checks its cost by).
std::uint64_t line_at_bytes_counted() noexcept;

}  // namespace detail
}  // namespace procflow::stages
