// C ABI of the vidgen CUDA library. Every entry point returns 0 on success or a non-zero status
// whose message vidgen_last_error() gives; none of them aborts the process.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define VIDGEN_API __attribute__((visibility("default")))

// Bumped whenever a signature below changes; vidgen/_cuda_abi.py checks it.
VIDGEN_API int vidgen_abi_version(void);
// Message of the last failed call on this thread ("" when none).
VIDGEN_API const char* vidgen_last_error(void);
// Number of visible CUDA devices; a machine without a GPU or driver returns a status and a message.
VIDGEN_API int vidgen_device_count(int* count);

#ifdef __cplusplus
}
#endif
