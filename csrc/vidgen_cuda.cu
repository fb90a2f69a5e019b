// Library-wide entry points: ABI version, error reporting, device discovery.
#include "error.cuh"
#include "vidgen_cuda.h"

namespace vidgen {
namespace {
thread_local std::string last_error;
}
void set_last_error(std::string message) { last_error = std::move(message); }
}  // namespace vidgen

extern "C" {

int vidgen_abi_version(void) { return 3; }

const char* vidgen_last_error(void) { return vidgen::last_error.c_str(); }

int vidgen_device_count(int* count) {
  *count = 0;
  return vidgen::cuda_status(cudaGetDeviceCount(count), "cudaGetDeviceCount");
}

}  // extern "C"
