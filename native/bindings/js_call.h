// A JS function that worker threads can call: call() posts the call to the JS thread and blocks
// until the function's result — or, when it returns a Promise, the Promise's value — has been
// handed to `settle` on the JS thread. A throw or rejection in JS comes back as an exception.
// Used for MLP replacement callbacks and for training progress and checkpoint callbacks.
#pragma once
#include <napi.h>

#include <functional>
#include <future>
#include <string>

namespace tc {

class JsCall {
 public:
  using Invoke = std::function<Napi::Value(Napi::Env, Napi::Function)>;
  using Settle = std::function<void(Napi::Value)>;

  JsCall() = default;
  JsCall(Napi::Env env, Napi::Function fn, const char* name);

  // From a worker thread. `what` names the callback in error messages.
  void call(const Invoke& invoke, const Settle& settle, const std::string& what);
  // Lets the environment exit; call once, from any thread, when no more calls will come.
  void release();

 private:
  struct Pending {
    const Invoke* invoke;
    const Settle* settle;
    std::promise<void> done;
  };
  static void onJsThread(Napi::Env env, Napi::Function fn, std::nullptr_t*, Pending* pending);
  using Tsfn = Napi::TypedThreadSafeFunction<std::nullptr_t, Pending, onJsThread>;
  Tsfn tsfn_;
};

}  // namespace tc
