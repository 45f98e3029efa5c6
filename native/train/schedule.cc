#include "train/schedule.h"

#include <algorithm>
#include <cmath>

#include "core/errors.h"

namespace tc {

Schedule scheduleFromName(const std::string& name) {
  if (name == "constant") return Schedule::Constant;
  if (name == "constantwithwarmup") return Schedule::ConstantWithWarmup;
  if (name == "linearwarmupdecay") return Schedule::LinearWarmupDecay;
  if (name == "cosineannealingwarmup") return Schedule::CosineWarmupDecay;
  throw InvalidArgument("unknown learning-rate schedule '" + name +
                        "' (expected constant, constantwithwarmup, linearwarmupdecay or cosineannealingwarmup)");
}

double scheduleFactor(const ScheduleSpec& spec, int64_t s) {
  const double W = static_cast<double>(std::max<int64_t>(spec.warmupSteps, 1));
  const double S = static_cast<double>(spec.totalSteps);
  const bool warming = s < spec.warmupSteps;
  switch (spec.kind) {
    case Schedule::Constant: return 1.0;
    case Schedule::ConstantWithWarmup: return std::min(1.0, (s + 1) / W);
    case Schedule::LinearWarmupDecay:
      if (warming) return (s + 1) / W;
      return std::max(0.0, (S - s) / std::max(1.0, S - spec.warmupSteps));
    case Schedule::CosineWarmupDecay: {
      if (warming) return (s + 1) / W;
      double progress = std::min(1.0, (s - spec.warmupSteps) / std::max(1.0, S - spec.warmupSteps));
      return spec.endFactor + 0.5 * (1 - spec.endFactor) * (1 + std::cos(M_PI * progress));
    }
  }
  return 1.0;
}

}  // namespace tc
