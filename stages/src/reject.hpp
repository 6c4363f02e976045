// Bad input set aside under pf::skip (csv_rows, records): counted in a stage counter and, when
// the reader's options name a reject file, appended to it as one CSV record each.
#pragma once

#include "reader.hpp"

#include <procflow/detail/bad_input.hpp>

#include <string>
#include <string_view>

namespace procflow::stages::detail {

// Creates (truncates) this rank's reject file for `path` with its header line when a run starts
// (the reader's begin_run(), in the calling process): `path`, or "<path>.rank<R>" under
// procflow::mpi with several ranks (detail/job_place.hpp), so that no rank truncates the file
// another rank appends to. An empty `path` (no reject file) creates nothing.
void create_reject_file(const std::string& path, std::string_view header);

// A malformed row, record or line set aside under pf::skip (its file, line, column, error, text).
using rejected = procflow::detail::bad_input;

// Counts one rejected row or record in this stage's counter `counter_name`, keeps it among the
// run's dead letters (report.dead_letters, pf::dead_letters_to: the message names file, line and
// column; the item is the text as a std::string), and, when `path` is not empty, appends it to
// that reject file (this rank's, as create_reject_file names it) as one CSV record
// (file,line[,column],error,text) in one write(2) (O_APPEND: records of several replicas stay
// whole). Under pf::restart, a replacement re-reading its dead
// predecessor's block does none of this for the rows the predecessor set aside already.
void reject(std::string_view counter_name, const std::string& path, const rejected& r);

// A cursor's next(): `read()` (true: an item was read; false: the end). Under pf::skip (`skip`)
// a malformed row or record thrown as a `Bad` is set aside by `set_aside(bad)` and reading goes on.
template <class Bad, class Read, class SetAside>
bool read_setting_aside(bool skip, Read&& read, SetAside&& set_aside) {
  if (!skip) return read();
  for (;;) {
    try {
      return read();
    } catch (const Bad& bad) {
      set_aside(bad);
    }
  }
}

// The line at the reader's position without its line break (and one '\r'), read as far as
// reject_text_bytes; valid until the reader moves.
std::string_view line_for_reject(Reader& r);

}  // namespace procflow::stages::detail
