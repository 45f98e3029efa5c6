// Reading option objects passed from TypeScript (which validated them): typed getters with
// defaults that throw InvalidArgument naming the field when a value has the wrong type.
#pragma once
#include <napi.h>

#include <string>

#include "bindings/js_errors.h"

namespace tc {

inline bool hasValue(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  return !v.IsUndefined() && !v.IsNull();
}

inline double numberOr(const Napi::Object& o, const char* key, double fallback) {
  if (!hasValue(o, key)) return fallback;
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) throw InvalidArgument(std::string("option '") + key + "' must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

inline int64_t intOr(const Napi::Object& o, const char* key, int64_t fallback) {
  double d = numberOr(o, key, static_cast<double>(fallback));
  if (d != static_cast<double>(static_cast<int64_t>(d))) throw InvalidArgument(std::string("option '") + key + "' must be an integer");
  return static_cast<int64_t>(d);
}

inline bool boolOr(const Napi::Object& o, const char* key, bool fallback) {
  if (!hasValue(o, key)) return fallback;
  Napi::Value v = o.Get(key);
  if (!v.IsBoolean()) throw InvalidArgument(std::string("option '") + key + "' must be true or false");
  return v.As<Napi::Boolean>().Value();
}

inline std::string stringOr(const Napi::Object& o, const char* key, const std::string& fallback) {
  if (!hasValue(o, key)) return fallback;
  Napi::Value v = o.Get(key);
  if (!v.IsString()) throw InvalidArgument(std::string("option '") + key + "' must be a string");
  return v.As<Napi::String>();
}

inline Napi::Object objectOr(const Napi::Value& v) {
  return v.IsObject() ? v.As<Napi::Object>() : Napi::Object::New(v.Env());
}

}  // namespace tc
