#pragma once

#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <exception>
#include <functional>
#include <memory>
#include <optional>

namespace mxvoip::server {

// Runs `job` on `pool` (for CPU-heavy work such as password hashing) and resumes the awaiting
// coroutine on its own executor with the result or the exception.
//
// Deliberately not a coroutine itself, and taking a std::function rather than a lambda:
// GCC 12 mis-copies lambda captures held in coroutine frames. Callers should build the
// std::function as a named local before co_await for the same reason.
template <typename T>
auto run_blocking(boost::asio::thread_pool& pool, std::function<T()>&& job) {
    namespace asio = boost::asio;
    auto init = [&pool](auto handler, std::function<T()> work) {
        // Outstanding work on the caller's executor: its io_context does not stop under us.
        auto ex = asio::prefer(asio::get_associated_executor(handler),
                               asio::execution::outstanding_work.tracked);
        auto shared = std::make_shared<decltype(handler)>(std::move(handler));
        asio::post(pool, [work = std::move(work), shared, ex]() mutable {
            std::exception_ptr error;
            std::optional<T> value;
            try {
                value.emplace(work());
            } catch (...) {
                error = std::current_exception();
            }
            asio::post(ex, [shared, error, value = std::move(value)]() mutable {
                (*shared)(error, value ? std::move(*value) : T{});
            });
        });
    };
    return asio::async_initiate<decltype(asio::use_awaitable), void(std::exception_ptr, T)>(
        init, asio::use_awaitable, std::move(job));
}

}  // namespace mxvoip::server
