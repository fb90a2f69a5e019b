// Error plumbing shared by the library's entry points: a thread-local message and a status code.
#pragma once
#include <cuda_runtime.h>
#include <string>

namespace vidgen {

void set_last_error(std::string message);

// Records the CUDA error (if any) with `what` and returns a non-zero status for it.
inline int cuda_status(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return 0;
  set_last_error(std::string(what) + ": " + cudaGetErrorString(err));
  return static_cast<int>(err);
}

}  // namespace vidgen
