#include "reader.hpp"
#include "reject.hpp"
#include "scan.hpp"

#include <procflow/detail/bad_input.hpp>
#include <procflow/error.hpp>
#include <procflow/stages/lines.hpp>

#include <memory>

namespace procflow::stages {
namespace detail {

namespace {

// A line past max_line_bytes under pf::skip: thrown from inside find_line, caught by the reading loop.
struct long_line {};

// The error text for a line longer than max_line_bytes.
std::string too_long(const line_options& o) { return "line longer than " + std::to_string(o.max_line_bytes) + " bytes"; }
// Under pf::skip: sets the over-long line at `r`'s position (line number `line`) aside and moves past it.
void set_aside(Reader& r, const line_options& o, std::uint64_t line) {
  reject("lines rejected", o.reject_file, {r.file().path, line, std::nullopt, too_long(o), line_for_reject(r)});
  seek_line_start(r, UINT64_MAX);
}

}  // namespace

// Sequential reading (stdin, gzip, or a pipeline without fusion): file after file.
class line_stream {
 public:
  line_stream(const input_set& input, const line_options& options) : input_(input), options_(options) {}

  std::optional<std::string> next() {
    for (;;) {
      if (!reader_) {
        if (file_ == input_.files().size()) return std::nullopt;
        reader_ = std::make_unique<Reader>(input_.files()[file_], 0, /*sequential=*/true);
        line_ = 0;
      }
      bool nl = false;
      Reader& r = *reader_;
      std::size_t len = 0;
      try {
        len = find_line(r, options_.max_line_bytes, nl, [&] {
          if (skip_) throw long_line{};
          throw procflow::error(where(r.file(), r.offset(), line_ + 1) + ": " + too_long(options_));
        });
      } catch (const long_line&) {
        set_aside(r, options_, ++line_);
        continue;
      }
      if (len == std::string_view::npos) {
        reader_.reset();
        ++file_;
        continue;
      }
      std::string line(strip_cr(r.window().substr(0, len)));
      r.advance(len + (nl ? 1 : 0));
      ++line_;
      return line;
    }
  }

 private:
  const input_set& input_;
  line_options options_;
  std::size_t file_ = 0;
  std::unique_ptr<Reader> reader_;
  std::uint64_t line_ = 0;
  bool skip_ = procflow::detail::running_stage_skips();
};

}  // namespace detail

lines_source::lines_source(std::string input, line_options options)
    : input_(std::make_shared<const detail::input_set>(input, options.block_bytes)), options_(options) {
}

void lines_source::begin_run() const { detail::create_reject_file(options_.reject_file, "file,line,error,text"); }

std::size_t lines_source::fill(std::uint64_t first, std::uint64_t last, procflow::detail::batch_buffer<std::string>& out) const {
  // Items of the previous chunk are reused as storage: assigning into a string that has the
  // capacity already costs no allocation (a batch of lines allocates only while it grows).
  detail::size_fresh_batch(out, (last - first) * input_->block_bytes(), 32);
  std::size_t n = 0;
  const bool skip = procflow::detail::running_stage_skips();
  detail::for_each_block(*input_, first, last, [&](detail::Reader& r, const detail::input_set::block& block) {
    while (r.offset() < block.end) {
      bool nl = false;
      std::size_t len = 0;
      try {
        len = detail::find_line(r, options_.max_line_bytes, nl, [&] {
          if (skip) throw detail::long_line{};
          throw procflow::error(detail::where(r.file(), r.offset(), 0) + ": " + detail::too_long(options_));
        });
      } catch (const detail::long_line&) {
        detail::set_aside(r, options_, detail::line_at(r.file().id, r.offset()));
        continue;
      }
      if (len == std::string_view::npos) break;
      const std::string_view line = detail::strip_cr(r.window().substr(0, len));
      if (n < out.size()) {
        out[n].assign(line);
      } else {
        out.emplace_back(line);
      }
      ++n;
      r.advance(len + (nl ? 1 : 0));
    }
  });
  out.resize(n);
  return n;
}

std::optional<std::string> lines_source::next() {
  if (!stream_) stream_ = std::make_shared<detail::line_stream>(*input_, options_);
  return stream_->next();
}

}  // namespace procflow::stages
