// C ABI of the vidgen CUDA library. Every entry point returns 0 on success or a non-zero status
// whose message vidgen_last_error() gives; none of them aborts the process.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define VIDGEN_API __attribute__((visibility("default")))

// Bumped whenever a signature below changes; vidgen/ops/_cuda_lib.py checks it.
VIDGEN_API int vidgen_abi_version(void);
// Message of the last failed call on this thread ("" when none).
VIDGEN_API const char* vidgen_last_error(void);
// Number of visible CUDA devices; a machine without a GPU or driver returns a status and a message.
VIDGEN_API int vidgen_device_count(int* count);

// ---- Fused guidance step (csrc/guided_step.cu; semantics in kernels/guidance.py) ----------------
// Tensors are contiguous, of one dtype, viewed as (batch, pre, frames, post) with the frame axis
// of in-kernel noise at `frames` (B, C, F, h*w for video latents).
enum VidgenDtype { VIDGEN_FP32 = 0, VIDGEN_FP16 = 1, VIDGEN_BF16 = 2 };
enum VidgenPrediction { VIDGEN_EPSILON = 0, VIDGEN_V_PREDICTION = 1, VIDGEN_SAMPLE = 2 };
enum VidgenNoiseMode { VIDGEN_NOISE_NONE = 0, VIDGEN_NOISE_GIVEN = 1, VIDGEN_NOISE_GENERATED = 2 };
enum VidgenNoiseKind { VIDGEN_NOISE_IID = 0, VIDGEN_NOISE_MIXED = 1, VIDGEN_NOISE_PROGRESSIVE = 2 };
// The step rule and what its two noise levels are: DDIM's cumulative alphas (alpha_prod_t ->
// alpha_prod_prev) or Euler's sigmas (EulerDiscreteScheduler without churn: sigma -> sigma_next).
enum VidgenStepRule { VIDGEN_RULE_DDIM = 0, VIDGEN_RULE_EULER = 1 };
#define VIDGEN_NUM_PARTIALS 64

typedef struct VidgenGuidedStepArgs {
  void* out;                    // x_prev (x_next when inverse)
  void* pred_original;          // predicted x0, or NULL to skip it
  const void* sample;           // x_t
  const void* eps_cond;
  const void* eps_uncond;       // NULL: no guidance
  const void* prior_cond;       // NULL: no Video Adapter prior
  const void* noise;            // z when noise_mode == GIVEN
  float* partials;              // (batch, VIDGEN_NUM_PARTIALS, 4) fp32 workspace when rescaling
  const float* level_t_values;  // (1,) or (batch,) when level_t_stride >= 0
  const float* level_p_values;  // (1,) or (batch,) when level_p_stride >= 0
  const int64_t* seeds;         // (batch,) one Philox key per video, or NULL: `seed` for the batch
  const float* guidance_scales; // (scale_frames,) one guidance scale per frame, or NULL: guidance_scale
  int64_t batch, pre, frames, post;
  int64_t scale_post;           // an element at offset o in its video has scale frame (o / scale_post) % scale_frames
  uint64_t seed;
  float level_t, level_p;       // the input's and the output's noise level, used when the stride is -1
  int32_t level_t_stride, level_p_stride;  // -1 scalar, 0 one value, 1 one per video
  float guidance_scale, prior_strength, guidance_rescale, eta;
  float clip_range;             // +inf: no clipping
  float coef_keep, coef_new;    // noise mixing coefficients (kernels/noise.py mixing_coefficients)
  int32_t dtype, rule, prediction, use_clipped, inverse, noise_mode, noise_kind, scale_frames, device;
} VidgenGuidedStepArgs;

// sizeof(VidgenGuidedStepArgs), so bindings can check their copy of the struct.
VIDGEN_API int64_t vidgen_guided_step_args_size(void);
// One fused guidance step on `stream` (a cudaStream_t; NULL: the legacy default stream).
VIDGEN_API int vidgen_guided_step(const VidgenGuidedStepArgs* args, void* stream);
// Host build of the device Philox + Box-Muller (Triton's tl.randn4x), for tests on CPU machines:
// for each counter, 4 words (`words`, may be NULL) and 4 normals (`normals`, may be NULL).
VIDGEN_API int vidgen_philox_randn4x_host(uint64_t seed, const uint64_t* counters, int64_t n,
                                          uint32_t* words, float* normals);

#ifdef __cplusplus
}
#endif
