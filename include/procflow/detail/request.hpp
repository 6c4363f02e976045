// What travels through a pool's pipeline (pool.hpp): the caller's item with its request id, and
// the outcome so far. The user's map/filter callables are wrapped so that every stage passes the
// id on, and an exception fails that request only (it becomes its future's stage_error).
#pragma once

#include <procflow/detail/stages.hpp>
#include <procflow/replica.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace procflow::detail {

enum class request_status : std::uint8_t { value = 0, dropped = 1, failed = 2 };

// id, status, value (status value), then the failure (status failed): stage index, replica, pid,
// exception type, message.
template <class T>
using request = std::tuple<std::uint64_t, std::uint8_t, std::optional<T>, std::uint32_t, std::uint32_t, std::int32_t,
                           std::string, std::string>;

// Demangled type and what() of the exception being handled (lib/runtime/request_error.cpp).
void describe_current_exception(std::string& type, std::string& message);

template <class U, class T>
request<U> pass_on(request<T>& r) {
  request<U> out;
  std::get<0>(out) = std::get<0>(r);
  std::get<1>(out) = std::get<1>(r);
  std::get<3>(out) = std::get<3>(r);
  std::get<4>(out) = std::get<4>(r);
  std::get<5>(out) = std::get<5>(r);
  std::get<6>(out) = std::move(std::get<6>(r));
  std::get<7>(out) = std::move(std::get<7>(r));
  return out;
}

template <class R>
void fail_request(R& r, std::uint32_t stage) {
  std::get<1>(r) = static_cast<std::uint8_t>(request_status::failed);
  std::get<2>(r).reset();
  std::get<3>(r) = stage;
  const replica_info me = this_replica();
  std::get<4>(r) = me.index;
  std::get<5>(r) = me.pid;
  try {
    describe_current_exception(std::get<6>(r), std::get<7>(r));
  } catch (...) {
    std::get<6>(r) = "std::bad_alloc";
  }
}

// map(fn) over requests: fn on the value of a live request; a throw fails the request.
template <class T, class U, class F>
struct request_map {
  F fn;
  std::uint32_t stage;

  request<U> operator()(request<T>&& r) const
    requires const_callable_v<F, T&&> || const_callable_v<F, T&>
  {
    return apply(fn, r);
  }
  request<U> operator()(request<T>&& r)
    requires(!(const_callable_v<F, T&&> || const_callable_v<F, T&>))
  {
    return apply(fn, r);
  }
  // A per_replica callable's finish() at the pool's end (callable.hpp calls it when present).
  void finish()
    requires requires(F& f) { f.finish(); }
  {
    fn.finish();
  }

 private:
  template <class Fn>
  request<U> apply(Fn& f, request<T>& r) const {
    request<U> out = pass_on<U>(r);
    if (std::get<1>(r) != static_cast<std::uint8_t>(request_status::value)) return out;
    try {
      std::get<2>(out).emplace(call_with_item(f, *std::get<2>(r)));
    } catch (...) {
      fail_request(out, stage);
    }
    return out;
  }
};

// filter(pred) over requests: a live request whose value pred refuses is marked dropped.
template <class T, class F>
struct request_filter {
  F pred;
  std::uint32_t stage;

  request<T> operator()(request<T>&& r) const
    requires std::is_invocable_r_v<bool, const F&, const T&>
  {
    return apply(pred, r);
  }
  request<T> operator()(request<T>&& r)
    requires(!std::is_invocable_r_v<bool, const F&, const T&>)
  {
    return apply(pred, r);
  }
  void finish()
    requires requires(F& f) { f.finish(); }
  {
    pred.finish();
  }

 private:
  template <class P>
  request<T> apply(P& p, request<T>& r) const {
    if (std::get<1>(r) != static_cast<std::uint8_t>(request_status::value)) return std::move(r);
    try {
      if (!p(static_cast<const T&>(*std::get<2>(r)))) {
        std::get<1>(r) = static_cast<std::uint8_t>(request_status::dropped);
        std::get<2>(r).reset();
      }
    } catch (...) {
      fail_request(r, stage);
    }
    return std::move(r);
  }
};

}  // namespace procflow::detail
