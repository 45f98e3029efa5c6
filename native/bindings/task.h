// Task: runs heavy work on a libuv worker thread and settles a Promise on the JS thread.
// `work` must not touch any JS value; `toJs` converts its result on the JS thread.
#pragma once
#include <napi.h>

#include <functional>
#include <optional>
#include <utility>

#include "bindings/js_errors.h"
#include "core/threads.h"

namespace tc {

template <class Result>
class Task : public Napi::AsyncWorker {
 public:
  using Work = std::function<Result()>;
  using ToJs = std::function<Napi::Value(Napi::Env, Result&)>;

  static Napi::Promise start(Napi::Env env, const char* name, Work work, ToJs toJs) {
    auto* task = new Task(env, name, std::move(work), std::move(toJs));
    Napi::Promise promise = task->deferred_.Promise();
    task->Queue();
    return promise;
  }

 protected:
  Task(Napi::Env env, const char* name, Work work, ToJs toJs)
      : Napi::AsyncWorker(env, name), deferred_(Napi::Promise::Deferred::New(env)),
        work_(std::move(work)), toJs_(std::move(toJs)) {}

  void Execute() override {
    struct Executing {
      Executing() { workStarted(); }
      ~Executing() { workStopped(); }
    } executing;
    try {
      applyThreadSettings();
      result_.emplace(work_());
    } catch (...) {
      error_ = std::current_exception();
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    if (error_) {
      deferred_.Reject(toJsError(env, error_).Value());
      return;
    }
    try {
      deferred_.Resolve(toJs_(env, *result_));
    } catch (...) {
      deferred_.Reject(toJsError(env, std::current_exception()).Value());
    }
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Work work_;
  ToJs toJs_;
  std::optional<Result> result_;
  std::exception_ptr error_;
};

}  // namespace tc
