#include "bindings/tensor_wrap.h"

#include <ATen/ATen.h>

#include <cstring>
#include <thread>

#include "bindings/js_errors.h"
#include "bindings/state.h"
#include "bindings/task.h"
#include "tensor/dtype.h"

namespace tc {

// Zero-copy tensors keep their JS ArrayBuffer alive through a reference that may only be
// released on the JS thread; the tensor's deleter can run on a worker, so it hands the
// reference over through a thread-safe function.
struct BufferKeeper {
  Napi::Reference<Napi::Value> ref;
  std::thread::id jsThread;
  AddonState::Releaser releaser;
};

void deleteBufferKeeper(Napi::Env, Napi::Function, void*, BufferKeeper* keeper) { delete keeper; }

namespace {

void dropKeeper(BufferKeeper* keeper) {
  if (std::this_thread::get_id() == keeper->jsThread) {
    delete keeper;
  } else if (keeper->releaser.NonBlockingCall(keeper) != napi_ok) {
    // The environment is shutting down: leaking one reference is harmless then.
  }
}

struct TypedArrayInfo {
  void* data;
  size_t length;
  c10::ScalarType sourceType;  // element type of the JS array (uint16 stands in for raw 16-bit floats)
  bool rawHalfBits;
};

TypedArrayInfo describe(const Napi::TypedArray& array) {
  TypedArrayInfo info{static_cast<uint8_t*>(array.ArrayBuffer().Data()) + array.ByteOffset(), array.ElementLength(),
                      c10::kFloat, false};
  switch (array.TypedArrayType()) {
    case napi_float32_array: info.sourceType = c10::kFloat; break;
    case napi_float64_array: info.sourceType = c10::kDouble; break;
    case napi_int32_array: info.sourceType = c10::kInt; break;
    case napi_bigint64_array: info.sourceType = c10::kLong; break;
    case napi_int16_array: info.sourceType = c10::kShort; break;
    case napi_int8_array: info.sourceType = c10::kChar; break;
    case napi_uint8_array: info.sourceType = c10::kByte; break;
    case napi_uint16_array: info.sourceType = c10::kShort; info.rawHalfBits = true; break;
    default: throw InvalidArgument("unsupported TypedArray type for a tensor (use Float32Array, Float64Array, "
                                   "Int32Array, BigInt64Array, Int16Array, Int8Array, Uint8Array or Uint16Array)");
  }
  return info;
}

}  // namespace

Napi::Function JsTensor::define(Napi::Env env) {
  AddonState& state = AddonState::of(env);
  state.jsThread = std::this_thread::get_id();
  state.bufferReleaser = AddonState::Releaser::New(env, "transcoders:buffer-release", 0, 1);
  state.bufferReleaser.Unref(env);
  Napi::Function cls = DefineClass(env, "NativeTensor",
                                   {
                                       InstanceAccessor<&JsTensor::shape>("shape"),
                                       InstanceAccessor<&JsTensor::dtype>("dtype"),
                                       InstanceAccessor<&JsTensor::device>("device"),
                                       InstanceAccessor<&JsTensor::disposed>("disposed"),
                                       InstanceMethod<&JsTensor::toTypedArray>("toTypedArray"),
                                       InstanceMethod<&JsTensor::rawBytes>("rawBytes"),
                                       InstanceMethod<&JsTensor::to>("to"),
                                       InstanceMethod<&JsTensor::dispose>("dispose"),
                                       StaticMethod<&JsTensor::fromTypedArray>("fromTypedArray"),
                                   });
  AddonState::of(env).tensorClass = Napi::Persistent(cls);
  return cls;
}

Napi::Object JsTensor::wrap(Napi::Env env, at::Tensor tensor) {
  auto* boxed = new at::Tensor(std::move(tensor));
  auto external = Napi::External<at::Tensor>::New(env, boxed, [](Napi::Env, at::Tensor* t) { delete t; });
  return AddonState::of(env).tensorClass.New({external});
}

bool JsTensor::isTensor(const Napi::Value& value) {
  if (!value.IsObject()) return false;
  return value.As<Napi::Object>().InstanceOf(AddonState::of(value.Env()).tensorClass.Value());
}

at::Tensor JsTensor::tensorOf(const Napi::Value& value, const char* what) {
  if (!isTensor(value)) throw InvalidArgument(std::string(what) + " must be a Tensor");
  JsTensor* self = JsTensor::Unwrap(value.As<Napi::Object>());
  if (!self->tensor_.defined()) throw InvalidArgument(std::string(what) + " is a disposed Tensor");
  self->checkSharedBuffer(what);
  return self->tensor_;
}

void JsTensor::checkSharedBuffer(const std::string& what) const {
  // A shared tensor points into its ArrayBuffer's memory: once the buffer is detached (transferred
  // to a worker, structuredClone with transfer) that memory belongs to someone else, or to nobody.
  if (sharedBuffer_.IsEmpty()) return;
  Napi::Value buffer = sharedBuffer_.Value();
  if (buffer.IsArrayBuffer() && buffer.As<Napi::ArrayBuffer>().IsDetached())
    throw InvalidArgument(what + " shares the memory of an ArrayBuffer that has been detached (transferred): "
                          "its data is gone. Create shared tensors only from buffers you keep (or copy: the default)");
}

JsTensor::JsTensor(const Napi::CallbackInfo& info) : Napi::ObjectWrap<JsTensor>(info) {
  if (info.Length() != 1 || !info[0].IsExternal())
    throw Napi::TypeError::New(info.Env(), "Tensors are created by Tensor.from(...) or returned by the library");
  tensor_ = *info[0].As<Napi::External<at::Tensor>>().Data();
  if (tensor_.defined() && tensor_.has_storage()) {
    chargedBytes_ = static_cast<int64_t>(tensor_.storage().nbytes());
    Napi::MemoryManagement::AdjustExternalMemory(info.Env(), chargedBytes_);
  }
}

JsTensor::~JsTensor() { release(); }

void JsTensor::release() {
  if (chargedBytes_ != 0) {
    Napi::MemoryManagement::AdjustExternalMemory(Env(), -chargedBytes_);
    chargedBytes_ = 0;
  }
  tensor_ = at::Tensor();
  sharedBuffer_.Reset();
}

const at::Tensor& JsTensor::live() const {
  if (!tensor_.defined()) throw InvalidArgument("this Tensor was disposed");
  checkSharedBuffer("this Tensor");
  return tensor_;
}

Napi::Value JsTensor::shape(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    auto sizes = live().sizes();
    Napi::Array out = Napi::Array::New(info.Env(), sizes.size());
    for (size_t i = 0; i < sizes.size(); ++i) out[i] = Napi::Number::New(info.Env(), static_cast<double>(sizes[i]));
    return out;
  });
}

Napi::Value JsTensor::dtype(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value { return Napi::String::New(info.Env(), dtypeName(live().scalar_type())); });
}

Napi::Value JsTensor::device(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value { return Napi::String::New(info.Env(), live().device().str()); });
}

Napi::Value JsTensor::disposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), !tensor_.defined()); }

Napi::Value JsTensor::dispose(const Napi::CallbackInfo& info) {
  release();
  return info.Env().Undefined();
}

// The tensor's bytes in its own dtype, row-major, little-endian (for writing files).
Napi::Value JsTensor::rawBytes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    at::Tensor t = live().detach().to(c10::kCPU).contiguous();
    size_t bytes = t.numel() * t.element_size();
    Napi::Uint8Array out = Napi::Uint8Array::New(env, bytes);
    if (bytes > 0) std::memcpy(out.Data(), t.data_ptr(), bytes);
    return out;
  });
}

// Copies the tensor into a new TypedArray: float32 (also for float16/bfloat16), float64, int64
// (BigInt64Array), int32, int16, int8, uint8, bool (Uint8Array).
Napi::Value JsTensor::toTypedArray(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    at::Tensor t = live().detach();
    if (t.scalar_type() == c10::kHalf || t.scalar_type() == c10::kBFloat16) t = t.to(c10::kFloat);
    t = t.to(c10::kCPU).contiguous();
    size_t bytes = t.numel() * t.element_size();
    Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(env, bytes);
    if (bytes > 0) std::memcpy(buffer.Data(), t.data_ptr(), bytes);
    size_t n = static_cast<size_t>(t.numel());
    switch (t.scalar_type()) {
      case c10::kFloat: return Napi::Float32Array::New(env, n, buffer, 0);
      case c10::kDouble: return Napi::Float64Array::New(env, n, buffer, 0);
      case c10::kLong: return Napi::BigInt64Array::New(env, n, buffer, 0);
      case c10::kInt: return Napi::Int32Array::New(env, n, buffer, 0);
      case c10::kShort: return Napi::Int16Array::New(env, n, buffer, 0);
      case c10::kChar: return Napi::Int8Array::New(env, n, buffer, 0);
      case c10::kByte:
      case c10::kBool: return Napi::Uint8Array::New(env, n, buffer, 0);
      default: throw InvalidArgument("cannot convert a " + dtypeName(t.scalar_type()) + " tensor to a TypedArray");
    }
  });
}

// to(device: string | null, dtype: string | null) -> Promise<NativeTensor>
Napi::Value JsTensor::to(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    at::Tensor source = live();
    c10::Device device = info[0].IsString() ? deviceFromName(info[0].As<Napi::String>()) : source.device();
    c10::ScalarType type = info[1].IsString() ? dtypeFromName(info[1].As<Napi::String>()) : source.scalar_type();
    return Task<at::Tensor>::start(
        env, "transcoders:tensor.to", [=]() { return source.to(device, type); },
        [](Napi::Env env, at::Tensor& t) -> Napi::Value { return wrap(env, t); });
  });
}

// fromTypedArray(array, shape: number[], dtype: string, share: boolean) -> NativeTensor
// Shares the JS memory (no copy) when `share` is set, the element types match and the data is
// aligned; otherwise copies (converting the element type when needed).
Napi::Value JsTensor::fromTypedArray(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    if (!info[0].IsTypedArray()) throw InvalidArgument("Tensor.from: data must be a TypedArray");
    auto array = info[0].As<Napi::TypedArray>();
    TypedArrayInfo src = describe(array);
    auto shapeArray = info[1].As<Napi::Array>();
    std::vector<int64_t> shape;
    int64_t count = 1;
    for (uint32_t i = 0; i < shapeArray.Length(); ++i) {
      double d = shapeArray.Get(i).As<Napi::Number>().DoubleValue();
      if (!(d >= 0) || d != static_cast<double>(static_cast<int64_t>(d)))
        throw InvalidArgument("Tensor.from: shape entries must be non-negative integers");
      shape.push_back(static_cast<int64_t>(d));
      count *= shape.back();
    }
    if (count != static_cast<int64_t>(src.length))
      throw InvalidArgument("Tensor.from: shape holds " + std::to_string(count) + " elements but the array has " +
                            std::to_string(src.length));
    c10::ScalarType target = dtypeFromName(info[2].As<Napi::String>());
    bool share = info[3].ToBoolean();

    c10::ScalarType viewType = src.sourceType;
    if (src.rawHalfBits) {
      if (target != c10::kHalf && target != c10::kBFloat16)
        throw InvalidArgument("Tensor.from: a Uint16Array holds raw float16/bfloat16 bits; pass dtype 'float16' or 'bfloat16'");
      viewType = target;
    }
    if (src.sourceType == c10::kByte && target == c10::kBool) viewType = c10::kBool;
    size_t itemSize = c10::elementSize(viewType);
    bool aligned = reinterpret_cast<uintptr_t>(src.data) % itemSize == 0;

    at::Tensor view;
    if (viewType == target && share && aligned && count > 0) {
      AddonState& state = AddonState::of(env);
      auto* keeper = new BufferKeeper{Napi::Persistent(array.ArrayBuffer().As<Napi::Value>()), state.jsThread,
                                      state.bufferReleaser};
      view = at::from_blob(src.data, shape, [keeper](void*) { dropKeeper(keeper); }, at::TensorOptions().dtype(viewType));
      Napi::Object handle = wrap(env, view);
      JsTensor::Unwrap(handle)->sharedBuffer_ = Napi::Persistent(array.ArrayBuffer().As<Napi::Value>());
      return handle;
    }
    at::Tensor owned = at::empty(shape, at::TensorOptions().dtype(viewType));
    if (count > 0) std::memcpy(owned.data_ptr(), src.data, count * itemSize);
    return wrap(env, viewType == target ? owned : owned.to(target));
  });
}

}  // namespace tc
