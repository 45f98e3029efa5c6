// Learning-rate schedules as multipliers lambda(step) of the base rate (the paper's optim.py set).
#pragma once
#include <cstdint>
#include <string>

namespace tc {

enum class Schedule { Constant, ConstantWithWarmup, LinearWarmupDecay, CosineWarmupDecay };

Schedule scheduleFromName(const std::string& name);

struct ScheduleSpec {
  Schedule kind = Schedule::Constant;
  int64_t warmupSteps = 0;
  int64_t totalSteps = 1;
  double endFactor = 0.1;  // decay target as a fraction of the base rate
};

// lambda(s): constant 1; warm-up min(1, (s+1)/W); linear decay (S-s)/(S-W) after warm-up;
// cosine endFactor + (1 - endFactor)(1 + cos(pi (s-W)/(S-W)))/2 after warm-up.
double scheduleFactor(const ScheduleSpec& spec, int64_t step);

}  // namespace tc
