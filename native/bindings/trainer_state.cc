#include "bindings/trainer_state.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "bindings/js_args.h"
#include "bindings/js_errors.h"
#include "bindings/tensor_wrap.h"
#include "tensor/dtype.h"

namespace tc {

void optimizerOptionsFrom(const Napi::Object& o, double& lr, AdamOptions& adam, ScheduleSpec& schedule) {
  lr = numberOr(o, "lr", lr);
  adam.beta1 = numberOr(o, "beta1", adam.beta1);
  adam.beta2 = numberOr(o, "beta2", adam.beta2);
  adam.eps = numberOr(o, "eps", adam.eps);
  const std::string stateDtype = stringOr(o, "optimizerStateDtype", "float32");
  if (stateDtype != "float32" && stateDtype != "bfloat16")
    throw InvalidArgument("optimizerStateDtype must be 'float32' or 'bfloat16', got '" + stateDtype + "'");
  adam.stateDtype = stateDtype == "bfloat16" ? c10::kBFloat16 : c10::kFloat;
  if (hasValue(o, "optimizerStateDevice")) adam.stateDevice = deviceFromName(stringOr(o, "optimizerStateDevice", "cpu"));
  Napi::Object sched = objectOr(o.Get("schedule"));
  schedule.kind = scheduleFromName(stringOr(sched, "kind", "constant"));
  schedule.warmupSteps = intOr(sched, "warmupSteps", 0);
  schedule.totalSteps = intOr(sched, "totalSteps", 1);
  schedule.endFactor = numberOr(sched, "endFactor", 0.1);
}

Napi::Object trainerStateToJs(Napi::Env env, const at::Tensor& sinceFired, const std::vector<std::string>& params, Adam& adam) {
  Napi::Object out = Napi::Object::New(env);
  out.Set("steps_since_fired", JsTensor::wrap(env, sinceFired.clone()));
  auto& state = adam.state();
  for (size_t i = 0; i < params.size(); ++i) {
    out.Set("adam." + params[i] + ".exp_avg", JsTensor::wrap(env, state[i].expAvg.clone()));
    out.Set("adam." + params[i] + ".exp_avg_sq", JsTensor::wrap(env, state[i].expAvgSq.clone()));
  }
  out.Set("step", static_cast<double>(adam.steps()));
  return out;
}

void trainerStateFromJs(const Napi::Object& s, at::Tensor& sinceFired, const std::vector<std::string>& params, Adam& adam) {
  at::NoGradGuard noGrad;
  auto restore = [&](at::Tensor& into, const std::string& name) {
    if (!JsTensor::isTensor(s.Get(name))) throw InvalidArgument("trainer state '" + name + "' is missing");
    at::Tensor t = JsTensor::tensorOf(s.Get(name), name.c_str());
    if (t.sizes() != into.sizes())
      throw InvalidArgument("trainer state '" + name + "' has shape " + c10::str(t.sizes()) + ", expected " + c10::str(into.sizes()));
    into.copy_(t);
  };
  restore(sinceFired, "steps_since_fired");
  auto& state = adam.state();
  for (size_t i = 0; i < params.size(); ++i) {
    restore(state[i].expAvg, "adam." + params[i] + ".exp_avg");
    restore(state[i].expAvgSq, "adam." + params[i] + ".exp_avg_sq");
  }
  adam.setSteps(intOr(s, "step", 0));
}

}  // namespace tc
