#include "bindings/js_errors.h"

#include <c10/util/Exception.h>

#include <new>

#include "bindings/state.h"
#include "distributed/process_group.h"

namespace tc {

void registerErrorClasses(const Napi::CallbackInfo& info) {
  auto classes = info[0].As<Napi::Object>();
  AddonState& state = AddonState::of(info.Env());
  state.torchError = Napi::Persistent(classes.Get("TorchError").As<Napi::Function>());
  state.invalidArgumentError = Napi::Persistent(classes.Get("InvalidArgumentError").As<Napi::Function>());
  state.formatError = Napi::Persistent(classes.Get("FormatError").As<Napi::Function>());
  state.numericalError = Napi::Persistent(classes.Get("NumericalError").As<Napi::Function>());
  state.distributedError = Napi::Persistent(classes.Get("DistributedError").As<Napi::Function>());
}

namespace {

Napi::Error make(Napi::Env env, const Napi::FunctionReference& cls, const std::string& message) {
  if (cls.IsEmpty()) return Napi::Error::New(env, message);
  return Napi::Error(env, cls.New({Napi::String::New(env, message)}));
}

}  // namespace

Napi::Error toJsError(Napi::Env env, std::exception_ptr error) {
  AddonState& state = AddonState::of(env);
  try {
    std::rethrow_exception(error);
  } catch (const Napi::Error& e) {
    return e;
  } catch (const InvalidArgument& e) {
    return make(env, state.invalidArgumentError, e.what());
  } catch (const DistributedFailure& e) {
    return make(env, state.distributedError, e.what());
  } catch (const NonFinite& e) {
    return make(env, state.numericalError, e.what());
  } catch (const FormatError& e) {
    Napi::Error js = make(env, state.formatError, e.what());
    js.Value().Set("file", Napi::String::New(env, e.file));
    return js;
  } catch (const c10::Error& e) {
    // libtorch messages carry a C++ backtrace that means nothing to a JS user.
    return make(env, state.torchError, std::string("libtorch: ") + e.what_without_backtrace());
  } catch (const std::bad_alloc&) {
    return make(env, state.torchError, "out of memory");
  } catch (const std::exception& e) {
    return make(env, state.torchError, e.what());
  } catch (...) {
    return make(env, state.torchError, "unknown native error");
  }
}

}  // namespace tc
