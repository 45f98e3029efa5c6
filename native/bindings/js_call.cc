#include "bindings/js_call.h"

#include <stdexcept>

#include "bindings/js_errors.h"
#include "core/threads.h"

namespace tc {

namespace {

std::string messageOf(const Napi::Value& reason) {
  if (reason.IsObject()) {
    Napi::Value m = reason.As<Napi::Object>().Get("message");
    if (m.IsString()) return m.As<Napi::String>();
  }
  return reason.ToString();
}

}  // namespace

JsCall::JsCall(Napi::Env env, Napi::Function fn, const char* name) : tsfn_(Tsfn::New(env, fn, name, 0, 1)) {}

void JsCall::onJsThread(Napi::Env env, Napi::Function fn, std::nullptr_t*, Pending* pending) {
  if (env == nullptr) return;  // environment torn down: the waiting worker sees a broken promise
  auto fail = [pending](const std::string& message) {
    pending->done.set_exception(std::make_exception_ptr(std::runtime_error(message)));
  };
  auto settle = [pending, fail](const Napi::Value& value) {
    try {
      (*pending->settle)(value);
      pending->done.set_value();
    } catch (const std::exception& e) {
      fail(e.what());
    }
  };
  try {
    Napi::Value out = (*pending->invoke)(env, fn);
    if (out.IsPromise()) {
      auto onOk = Napi::Function::New(env, [settle](const Napi::CallbackInfo& info) { settle(info[0]); });
      auto onErr = Napi::Function::New(env, [fail](const Napi::CallbackInfo& info) { fail(messageOf(info[0])); });
      out.As<Napi::Object>().Get("then").As<Napi::Function>().Call(out, {onOk, onErr});
    } else {
      settle(out);
    }
  } catch (const Napi::Error& e) {
    fail(e.Message());
  } catch (const std::exception& e) {
    fail(e.what());
  }
}

void JsCall::call(const Invoke& invoke, const Settle& settle, const std::string& what) {
  Pending pending{&invoke, &settle, {}};
  std::future<void> done = pending.done.get_future();
  // While it waits for the JS thread this worker executes nothing (see workExecuting).
  struct Waiting {
    Waiting() { workStopped(); }
    ~Waiting() { workStarted(); }
  } waiting;
  if (tsfn_.BlockingCall(&pending) != napi_ok) throw InvalidArgument(what + " failed: the JS environment is shutting down");
  try {
    done.get();
  } catch (const std::future_error&) {
    throw InvalidArgument(what + " never returned");
  } catch (const std::exception& e) {
    throw InvalidArgument(what + " failed: " + e.what());
  }
}

void JsCall::release() { tsfn_.Release(); }

}  // namespace tc
