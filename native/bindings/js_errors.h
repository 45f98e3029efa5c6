// Translation of the native core's errors (core/errors.h) into JS Error subclasses.
// Every binding runs its body through `guard` (or a Task), so no C++ exception can reach
// node-addon-api uncaught and abort the process.
#pragma once
#include <napi.h>

#include <exception>

#include "core/errors.h"

namespace tc {

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
