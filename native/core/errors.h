// Error vocabulary of the native core and its translation into JS Error subclasses.
// Every binding runs its body through `guard` (or a Task), so no C++ exception can reach
// node-addon-api uncaught and abort the process.
#pragma once
#include <napi.h>

#include <exception>
#include <stdexcept>
#include <string>

namespace tc {

// Bad input from the caller (ids out of range, wrong shapes, unknown names) -> JS InvalidArgumentError.
struct InvalidArgument : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A file that does not parse or does not hold what it claims -> JS FormatError (with .file).
struct FormatError : std::runtime_error {
  FormatError(std::string file, const std::string& message)
      : std::runtime_error(file + ": " + message), file(std::move(file)) {}
  std::string file;
};

// A loss, gradient or weight became NaN or infinite -> JS NumericalError.
struct NonFinite : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Stores the JS classes that errors are created with (called once from lib/native.ts).
void registerErrorClasses(const Napi::CallbackInfo& info);

// Converts a caught C++ exception into a JS Error of the matching registered subclass.
Napi::Error toJsError(Napi::Env env, std::exception_ptr error);

// Runs `body`, rethrowing any C++ exception as the matching JS error (for synchronous bindings).
template <class Body>
auto guard(Napi::Env env, Body&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;
  } catch (...) {
    throw toJsError(env, std::current_exception());
  }
}

}  // namespace tc
