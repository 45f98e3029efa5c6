// JsTensor: the JS handle over an at::Tensor (wrapped by lib/tensor.ts).
// The tensor is released by dispose() or, failing that, when the handle is garbage-collected;
// its byte size is reported to V8 so that large tensors create GC pressure.
#pragma once
#include <ATen/Tensor.h>
#include <napi.h>

#include <string>

namespace tc {

class JsTensor : public Napi::ObjectWrap<JsTensor> {
 public:
  static Napi::Function define(Napi::Env env);
  // A new JS handle owning (a reference to) `tensor`.
  static Napi::Object wrap(Napi::Env env, at::Tensor tensor);
  // The tensor behind a JS handle; throws InvalidArgument for anything else or a disposed one.
  static at::Tensor tensorOf(const Napi::Value& value, const char* what);
  static bool isTensor(const Napi::Value& value);

  explicit JsTensor(const Napi::CallbackInfo& info);
  ~JsTensor() override;

 private:
  Napi::Value shape(const Napi::CallbackInfo& info);
  Napi::Value dtype(const Napi::CallbackInfo& info);
  Napi::Value device(const Napi::CallbackInfo& info);
  Napi::Value disposed(const Napi::CallbackInfo& info);
  Napi::Value toTypedArray(const Napi::CallbackInfo& info);
  Napi::Value rawBytes(const Napi::CallbackInfo& info);
  Napi::Value to(const Napi::CallbackInfo& info);
  Napi::Value dispose(const Napi::CallbackInfo& info);
  static Napi::Value fromTypedArray(const Napi::CallbackInfo& info);

  void release();
  const at::Tensor& live() const;
  // Throws InvalidArgument naming `what` when this tensor shares a JS ArrayBuffer that was detached.
  void checkSharedBuffer(const std::string& what) const;

  at::Tensor tensor_;
  // The ArrayBuffer a zero-copy tensor shares (empty otherwise), to notice that it was detached.
  Napi::Reference<Napi::Value> sharedBuffer_;
  int64_t chargedBytes_ = 0;
};

}  // namespace tc
