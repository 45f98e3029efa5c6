#include "bindings/distributed_wrap.h"

#include <memory>
#include <string>

#include "bindings/js_args.h"
#include "bindings/js_errors.h"
#include "bindings/task.h"
#include "bindings/tensor_wrap.h"
#include "core/errors.h"
#include "distributed/process_group.h"

namespace tc {
namespace {

// What JS holds: the group until leave() (or the handle is collected).
struct Holder {
  std::shared_ptr<ProcessGroup> group;
};


ReduceKind reduceKind(const std::string& op) {
  if (op == "sum") return ReduceKind::Sum;
  if (op == "max") return ReduceKind::Max;
  if (op == "min") return ReduceKind::Min;
  if (op == "product") return ReduceKind::Product;
  throw InvalidArgument("op must be sum, max, min or product, got '" + op + "'");
}

// join({ host, port, rank, worldSize, timeoutMs }) -> Promise<group>: blocks a worker until every rank joined.
Napi::Value join(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    Napi::Object o = objectOr(info[0]);
    GroupOptions g;
    g.host = stringOr(o, "host", g.host);
    g.port = static_cast<int>(intOr(o, "port", g.port));
    g.rank = static_cast<int>(intOr(o, "rank", 0));
    g.size = static_cast<int>(intOr(o, "worldSize", 1));
    g.timeout = std::chrono::milliseconds(intOr(o, "timeoutMs", g.timeout.count()));
    return Task<std::shared_ptr<ProcessGroup>>::start(
        env, "transcoders:processGroupJoin", [g]() { return ProcessGroup::join(g); },
        [](Napi::Env env, std::shared_ptr<ProcessGroup>& pg) -> Napi::Value {
          auto external = Napi::External<Holder>::New(env, new Holder{pg}, [](Napi::Env, Holder* h) { delete h; });
          Napi::Object out = Napi::Object::New(env);
          out.Set("handle", external);
          out.Set("rank", pg->rank());
          out.Set("worldSize", pg->size());
          return out;
        });
  });
}

Napi::Value allReduce(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    auto pg = processGroupOf(info[0]);
    at::Tensor t = JsTensor::tensorOf(info[1], "tensor");
    ReduceKind kind = reduceKind(info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : "sum");
    return Task<at::Tensor>::start(
        env, "transcoders:allReduce", [pg, t, kind]() { return pg->allReduce(t, kind); },
        [](Napi::Env env, at::Tensor& out) -> Napi::Value { return JsTensor::wrap(env, out); });
  });
}

Napi::Value broadcast(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    auto pg = processGroupOf(info[0]);
    at::Tensor t = JsTensor::tensorOf(info[1], "tensor");
    if (!info[2].IsNumber()) throw InvalidArgument("broadcast: root must be a rank");
    int root = info[2].As<Napi::Number>().Int32Value();
    return Task<at::Tensor>::start(
        env, "transcoders:broadcast", [pg, t, root]() { return pg->broadcast(t, root); },
        [](Napi::Env env, at::Tensor& out) -> Napi::Value { return JsTensor::wrap(env, out); });
  });
}

Napi::Value barrier(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    auto pg = processGroupOf(info[0]);
    return Task<bool>::start(
        env, "transcoders:barrier", [pg]() { pg->barrier(); return true; },
        [](Napi::Env env, bool&) -> Napi::Value { return env.Undefined(); });
  });
}

// leave(group): drops this handle's hold on the group (collectives in flight keep it until they end).
Napi::Value leave(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    if (!info[0].IsExternal()) throw InvalidArgument("expected a process group");
    info[0].As<Napi::External<Holder>>().Data()->group.reset();
    return info.Env().Undefined();
  });
}

}  // namespace

std::shared_ptr<ProcessGroup> processGroupOf(const Napi::Value& v) {
  if (!v.IsExternal()) throw InvalidArgument("expected a process group");
  auto* holder = v.As<Napi::External<Holder>>().Data();
  if (!holder->group) throw InvalidArgument("the process group was left (leave() was called)");
  return holder->group;
}

Napi::Object distributedExports(Napi::Env env) {
  Napi::Object out = Napi::Object::New(env);
  out.Set("join", Napi::Function::New(env, join));
  out.Set("allReduce", Napi::Function::New(env, allReduce));
  out.Set("broadcast", Napi::Function::New(env, broadcast));
  out.Set("barrier", Napi::Function::New(env, barrier));
  out.Set("leave", Napi::Function::New(env, leave));
  return out;
}

}  // namespace tc
