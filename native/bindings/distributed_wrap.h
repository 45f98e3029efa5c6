// The process group of native/distributed/process_group.h for JS (lib/distributed/process-group.ts):
// join, collectives off the JS thread (Promises), and leave.
#pragma once
#include <napi.h>

#include <memory>

#include "distributed/process_group.h"

namespace tc {

// { join(options) -> Promise<group>, allReduce(group, tensor, op) -> Promise<tensor>,
//   broadcast(group, tensor, root) -> Promise<tensor>, barrier(group) -> Promise<void>, leave(group) }
Napi::Object distributedExports(Napi::Env env);

// The group behind a JS handle (the `handle` join resolved with); InvalidArgument when it is not one
// or was left.
std::shared_ptr<ProcessGroup> processGroupOf(const Napi::Value& handle);

}  // namespace tc
