// What the two trainers' JS handles share: their optimizer options from a JS object, and their state
// (dead-feature counters, Adam moments, step) to and from JS for checkpoints.
#pragma once
#include <napi.h>

#include <ATen/Tensor.h>

#include <string>
#include <utility>
#include <vector>

#include "train/adam.h"
#include "train/schedule.h"

namespace tc {

// lr, beta1, beta2, eps and schedule { kind, warmupSteps, totalSteps, endFactor } of a JS options object.
void optimizerOptionsFrom(const Napi::Object& o, double& lr, AdamOptions& adam, ScheduleSpec& schedule);

// { step, steps_since_fired, "adam.<param>.exp_avg", "adam.<param>.exp_avg_sq" } (copies).
Napi::Object trainerStateToJs(Napi::Env env, const at::Tensor& sinceFired, const std::vector<std::string>& params, Adam& adam);

// Restores what trainerStateToJs wrote; InvalidArgument names a missing or mis-shaped entry.
void trainerStateFromJs(const Napi::Object& s, at::Tensor& sinceFired, const std::vector<std::string>& params, Adam& adam);

}  // namespace tc
