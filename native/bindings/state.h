// Per-environment state of the addon (one per Node.js environment / worker thread).
#pragma once
#include <napi.h>

#include <thread>

namespace tc {

struct BufferKeeper;
void deleteBufferKeeper(Napi::Env, Napi::Function, void*, BufferKeeper* keeper);

struct AddonState {
  // Releases JS references held by tensors whose memory is shared with a JS ArrayBuffer.
  using Releaser = Napi::TypedThreadSafeFunction<void, BufferKeeper, deleteBufferKeeper>;
  Releaser bufferReleaser;
  std::thread::id jsThread;

  Napi::FunctionReference torchError;
  Napi::FunctionReference invalidArgumentError;
  Napi::FunctionReference formatError;
  Napi::FunctionReference numericalError;
  Napi::FunctionReference distributedError;
  Napi::FunctionReference tensorClass;
  Napi::FunctionReference modelClass;
  Napi::FunctionReference transcoderClass;
  Napi::FunctionReference trainerClass;
  Napi::FunctionReference crossLayerClass;
  Napi::FunctionReference crossLayerTrainerClass;
  Napi::FunctionReference replacementModelClass;

  static AddonState& of(Napi::Env env) { return *env.GetInstanceData<AddonState>(); }
};

}  // namespace tc
