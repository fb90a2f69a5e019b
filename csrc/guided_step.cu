// The fused guidance step: Video Adapter composition + CFG (+ rescale) + one DDIM step (or DDIM
// inversion step) or one Euler step (EulerDiscreteScheduler without churn), METHODS.md sections 4-5. kernels/guidance.py holds the PyTorch reference (the
// spec) and the Triton version of the same two passes:
//
//   rescale_stats_kernel  (only when guidance_rescale > 0 with guidance) grid (NUM_PARTIALS, B):
//       shifted sums of eps_text and eps and of their squares -> partials (B, NUM_PARTIALS, 4)
//   guided_step_kernel    grid (cdiv(items, 256), B): warp 0 folds the partials of its video into
//       the rescale factor (fp64), then each thread reads one 16-byte vector of every input per
//       frame, computes in fp32 and writes out (and x0) once.
//
// Work items. Without in-kernel noise a video is one flat row of N elements and an item is one
// vector of VEC elements. With in-kernel noise the video is (pre, frames, post) and an item is
// VEC adjacent columns x 4 frames (one Philox counter per column gives those 4 frames); progressive
// noise replays the earlier frames' draws in registers to rebuild its AR(1) chain, so frame groups
// need not run in sequence. The noise is the stream of kernels/noise.py's Triton helpers
// (philox_origin, frame_normals, shared_normal, correlate), which both Triton kernels call; this
// copy is pinned to them by tests/test_cuda_library.py: change both, and the pin, together.
// The guidance scale is one value, or one per frame (guidance_scales): an element's frame follows
// from its offset in the video, o / scale_post % scale_frames, so a vector must not straddle two.
// Indexing is int64 throughout; VEC is 16 bytes when every pointer is 16-byte aligned and the
// row length (and scale_post with per-frame scales) is a multiple of VEC, else 1.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "error.cuh"
#include "philox.cuh"
#include "vidgen_cuda.h"

namespace vidgen {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Inputs are read once and outputs written once: streaming (evict-first) cache hints.
template <typename T, int VEC>
__device__ __forceinline__ void load(const void* base, int64_t offset, float (&v)[VEC]) {
  const T* p = static_cast<const T*>(base) + offset;
  if constexpr (VEC * sizeof(T) == 16) {
    uint4 raw = __ldcs(reinterpret_cast<const uint4*>(p));
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < VEC; ++i) v[i] = to_float(e[i]);
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) v[i] = to_float(p[i]);
  }
}

template <typename T, int VEC>
__device__ __forceinline__ void store(void* base, int64_t offset, const float (&v)[VEC]) {
  T* p = static_cast<T*>(base) + offset;
  if constexpr (VEC * sizeof(T) == 16) {
    uint4 raw;
    T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int i = 0; i < VEC; ++i) e[i] = from_float<T>(v[i]);
    __stcs(reinterpret_cast<uint4*>(p), raw);
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) p[i] = from_float<T>(v[i]);
  }
}

// The guidance scale of the elements at offset `in_video` of their video (VEC of them share a frame).
__device__ __forceinline__ float guidance_scale_at(const VidgenGuidedStepArgs& a, int64_t in_video) {
  if (a.guidance_scales == nullptr) return a.guidance_scale;
  return a.guidance_scales[(in_video / a.scale_post) % a.scale_frames];
}

// eps_text and the guided eps of VEC elements at `offset`, guided with `scale`.
template <typename T, int VEC>
__device__ __forceinline__ void compose(const VidgenGuidedStepArgs& a, int64_t offset, float scale,
                                        float (&text)[VEC], float (&eps)[VEC]) {
  load<T, VEC>(a.eps_cond, offset, text);
  if (a.prior_cond != nullptr) {
    float prior[VEC];
    load<T, VEC>(a.prior_cond, offset, prior);
#pragma unroll
    for (int i = 0; i < VEC; ++i) text[i] = fmaf(a.prior_strength, prior[i], text[i]);
  }
  if (a.eps_uncond != nullptr) {
    float uncond[VEC];
    load<T, VEC>(a.eps_uncond, offset, uncond);
#pragma unroll
    for (int i = 0; i < VEC; ++i) eps[i] = fmaf(scale, text[i] - uncond[i], uncond[i]);
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) eps[i] = text[i];
  }
}

template <typename V>
__device__ __forceinline__ V warp_sum(V v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// ---- pass 1: per-video shifted sums for rescale_noise_cfg ------------------------------------
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) rescale_stats_kernel(VidgenGuidedStepArgs a) {
  const int64_t video = blockIdx.y;
  const int64_t n = a.pre * a.frames * a.post;
  const int64_t vectors = n / VEC;
  const int64_t chunk = (vectors + VIDGEN_NUM_PARTIALS - 1) / VIDGEN_NUM_PARTIALS;
  const int64_t begin = blockIdx.x * chunk, end = min(begin + chunk, vectors);
  // Shift by the video's first element: sum-of-squares variance then keeps its precision.
  float pivot_text[1], pivot_eps[1];
  compose<T, 1>(a, video * n, guidance_scale_at(a, 0), pivot_text, pivot_eps);
  float sums[4] = {0.f, 0.f, 0.f, 0.f};
  for (int64_t v = begin + threadIdx.x; v < end; v += kThreads) {
    float text[VEC], eps[VEC];
    compose<T, VEC>(a, video * n + v * VEC, guidance_scale_at(a, v * VEC), text, eps);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const float dt = text[i] - pivot_text[0], de = eps[i] - pivot_eps[0];
      sums[0] += dt;
      sums[1] = fmaf(dt, dt, sums[1]);
      sums[2] += de;
      sums[3] = fmaf(de, de, sums[3]);
    }
  }
  __shared__ float warp_sums[kThreads / 32][4];
#pragma unroll
  for (int k = 0; k < 4; ++k) sums[k] = warp_sum(sums[k]);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < 4; ++k) warp_sums[warp][k] = sums[k];
  }
  __syncthreads();
  if (threadIdx.x < 4) {
    float total = 0.f;
#pragma unroll
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w][threadIdx.x];
    a.partials[(video * VIDGEN_NUM_PARTIALS + blockIdx.x) * 4 + threadIdx.x] = total;
  }
}

// phi * std(eps_text) / std(eps) + 1 - phi for `video`, by warp 0, in fp64.
__device__ float rescale_factor(const VidgenGuidedStepArgs& a, int64_t video) {
  const float* rows = a.partials + video * VIDGEN_NUM_PARTIALS * 4;
  double s[4] = {0.0, 0.0, 0.0, 0.0};
  for (int p = threadIdx.x; p < VIDGEN_NUM_PARTIALS; p += 32) {
#pragma unroll
    for (int k = 0; k < 4; ++k) s[k] += rows[p * 4 + k];
  }
#pragma unroll
  for (int k = 0; k < 4; ++k) s[k] = warp_sum(s[k]);
  const double n = static_cast<double>(a.pre * a.frames * a.post);
  const double var_text = (s[1] - s[0] * s[0] / n) / (n - 1.0);
  const double var_eps = (s[3] - s[2] * s[2] / n) / (n - 1.0);
  return static_cast<float>(a.guidance_rescale * sqrt(var_text / var_eps) + (1.0 - a.guidance_rescale));
}

// Per-video scalars: the linear maps (x, eps) -> x0 and (x, eps) -> e of the prediction type, and
// the output coefficients out = out_x0 * x0 + out_e * e + sigma * z.
struct StepCoefficients {
  float x0_x, x0_e, e_x, e_e, sqrt_a, inv_sqrt_1ma, out_x0, out_e, sigma;
};

__device__ StepCoefficients step_coefficients(const VidgenGuidedStepArgs& a, int64_t video) {
  const float level_t = a.level_t_stride >= 0 ? a.level_t_values[video * a.level_t_stride] : a.level_t;
  const float level_p = a.level_p_stride >= 0 ? a.level_p_values[video * a.level_p_stride] : a.level_p;
  StepCoefficients c;
  if (a.rule == VIDGEN_RULE_EULER) {
    // x0 at sigma s by the prediction type; e is the sample itself: out = x + r (x - x0), r = (s' - s) / s.
    const float s = level_t, r = (level_p - s) / s;
    if (a.prediction == VIDGEN_V_PREDICTION) {
      c.x0_x = 1.0f / (s * s + 1.0f); c.x0_e = -s / sqrtf(s * s + 1.0f);
    } else if (a.prediction == VIDGEN_SAMPLE) {
      c.x0_x = 0.0f; c.x0_e = 1.0f;
    } else {
      c.x0_x = 1.0f; c.x0_e = -s;
    }
    c.e_x = 1.0f; c.e_e = 0.0f;
    c.sqrt_a = 0.0f; c.inv_sqrt_1ma = 0.0f;  // read only by use_clipped, which Euler refuses
    c.out_x0 = -r; c.out_e = 1.0f + r; c.sigma = 0.0f;
    return c;
  }
  const float a_t = level_t, a_p = level_p;
  const float sqrt_a = sqrtf(a_t), sqrt_1ma = sqrtf(1.0f - a_t);
  if (a.prediction == VIDGEN_V_PREDICTION) {
    c.x0_x = sqrt_a; c.x0_e = -sqrt_1ma; c.e_x = sqrt_1ma; c.e_e = sqrt_a;
  } else if (a.prediction == VIDGEN_SAMPLE) {
    c.x0_x = 0.0f; c.x0_e = 1.0f; c.e_x = 1.0f / sqrt_1ma; c.e_e = -sqrt_a / sqrt_1ma;
  } else {
    c.x0_x = 1.0f / sqrt_a; c.x0_e = -sqrt_1ma / sqrt_a; c.e_x = 0.0f; c.e_e = 1.0f;
  }
  c.sqrt_a = sqrt_a;
  c.inv_sqrt_1ma = 1.0f / sqrt_1ma;
  c.sigma = a.inverse ? 0.0f : a.eta * sqrtf(fmaxf((1.0f - a_p) / (1.0f - a_t) * (1.0f - a_t / a_p), 0.0f));
  c.out_x0 = sqrtf(a_p);
  c.out_e = sqrtf(fmaxf(1.0f - a_p - c.sigma * c.sigma, 0.0f));
  return c;
}

// One vector of one frame: compose, guide, rescale, step; z is the frame's noise (NOISE_GENERATED).
template <typename T, int VEC, int NOISE>
__device__ __forceinline__ void step_vector(const VidgenGuidedStepArgs& a, const StepCoefficients& c,
                                            float factor, int64_t offset, int64_t in_video, const float (&z)[VEC]) {
  float text[VEC], eps[VEC], x[VEC], noise[VEC], out[VEC], x0[VEC];
  compose<T, VEC>(a, offset, guidance_scale_at(a, in_video), text, eps);
  load<T, VEC>(a.sample, offset, x);
  if constexpr (NOISE == VIDGEN_NOISE_GIVEN) load<T, VEC>(a.noise, offset, noise);
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    const float e_in = eps[i] * factor;
    float pred_x0 = c.x0_x * x[i] + c.x0_e * e_in;
    if (a.clip_range < INFINITY) pred_x0 = fminf(fmaxf(pred_x0, -a.clip_range), a.clip_range);
    float e = a.use_clipped ? (x[i] - c.sqrt_a * pred_x0) * c.inv_sqrt_1ma : c.e_x * x[i] + c.e_e * e_in;
    float o = c.out_x0 * pred_x0 + c.out_e * e;
    if constexpr (NOISE == VIDGEN_NOISE_GIVEN) o = fmaf(c.sigma, noise[i], o);
    if constexpr (NOISE == VIDGEN_NOISE_GENERATED) o = fmaf(c.sigma, z[i], o);
    out[i] = o;
    x0[i] = pred_x0;
  }
  store<T, VEC>(a.out, offset, out);
  if (a.pred_original != nullptr) store<T, VEC>(a.pred_original, offset, x0);
}

// ---- pass 2: the elementwise step --------------------------------------------------------------
template <typename T, int VEC, int NOISE>
__global__ void __launch_bounds__(kThreads) guided_step_kernel(VidgenGuidedStepArgs a) {
  const int64_t video = blockIdx.y;
  __shared__ float shared_factor;
  const bool rescale = a.partials != nullptr;
  if (rescale && threadIdx.x < 32) {
    const float f = rescale_factor(a, video);
    if (threadIdx.x == 0) shared_factor = f;
  }
  if (rescale) __syncthreads();
  const float factor = rescale ? shared_factor : 1.0f;
  const StepCoefficients c = step_coefficients(a, video);
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t n = a.pre * a.frames * a.post;

  if constexpr (NOISE != VIDGEN_NOISE_GENERATED) {
    if (item >= n / VEC) return;
    const float no_noise[VEC] = {};
    step_vector<T, VEC, NOISE>(a, c, factor, video * n + item * VEC, item * VEC, no_noise);
  } else {
    const int64_t cols = a.pre * a.post, vector_cols = cols / VEC;
    const int64_t frame_groups = (a.frames + 3) / 4, philox_groups = (a.frames + 4) / 4;
    if (item >= frame_groups * vector_cols) return;
    const int64_t group = item / vector_cols, col = (item % vector_cols) * VEC;
    const int64_t row = col / a.post;
    const int64_t in_video = row * a.post * a.frames + (col - row * a.post);
    const int64_t offset = video * n + in_video;
    const uint64_t key = a.seeds != nullptr ? static_cast<uint64_t>(a.seeds[video]) : a.seed;
    const uint64_t counter = (a.seeds != nullptr ? 0 : video * philox_groups * cols) + col;

    float frames_z[4][VEC];  // this group's 4 frames of noise for the VEC columns
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const uint64_t ctr = counter + i;
      float shared = 0.0f, prev = 0.0f;
      if (a.noise_kind == VIDGEN_NOISE_MIXED) {  // the shared draw is index F: lane F % 4 of group F / 4
        const Normals4 s = randn4x(key, ctr + (a.frames / 4) * cols);
        const int lane = static_cast<int>(a.frames % 4);  // selects, not a dynamic index: no local memory
        shared = lane == 0 ? s.z[0] : lane == 1 ? s.z[1] : lane == 2 ? s.z[2] : s.z[3];
      }
      if (a.noise_kind == VIDGEN_NOISE_PROGRESSIVE) {
        for (int64_t g = 0; g < group; ++g) {
          const Normals4 z = randn4x(key, ctr + g * cols);
#pragma unroll
          for (int lane = 0; lane < 4; ++lane)
            prev = (g == 0 && lane == 0) ? z.z[0] : fmaf(a.coef_keep, prev, a.coef_new * z.z[lane]);
        }
      }
      const Normals4 z = randn4x(key, ctr + group * cols);
#pragma unroll
      for (int lane = 0; lane < 4; ++lane) {
        float value = z.z[lane];
        if (a.noise_kind == VIDGEN_NOISE_MIXED) {
          value = fmaf(a.coef_keep, shared, a.coef_new * z.z[lane]);
        } else if (a.noise_kind == VIDGEN_NOISE_PROGRESSIVE && (group > 0 || lane > 0)) {
          value = fmaf(a.coef_keep, prev, a.coef_new * z.z[lane]);
        }
        prev = value;
        frames_z[lane][i] = value;
      }
    }
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) {
      const int64_t f = 4 * group + lane;
      if (f >= a.frames) break;
      step_vector<T, VEC, NOISE>(a, c, factor, offset + f * a.post, in_video + f * a.post, frames_z[lane]);
    }
  }
}

template <typename T, int VEC>
int launch(const VidgenGuidedStepArgs& a, cudaStream_t stream) {
  const int64_t n = a.pre * a.frames * a.post;
  const dim3 block(kThreads);
  if (a.partials != nullptr) {
    rescale_stats_kernel<T, VEC><<<dim3(VIDGEN_NUM_PARTIALS, a.batch), block, 0, stream>>>(a);
    if (int status = cuda_status(cudaGetLastError(), "rescale_stats_kernel launch")) return status;
  }
  int64_t items;
  if (a.noise_mode == VIDGEN_NOISE_GENERATED) {
    items = (a.frames + 3) / 4 * (a.pre * a.post / VEC);
  } else {
    items = n / VEC;
  }
  const int64_t blocks = (items + kThreads - 1) / kThreads;
  if (blocks > 0x7fffffff) {
    set_last_error("guided_step: " + std::to_string(blocks) + " blocks per video exceed the grid limit 2**31 - 1");
    return -1;
  }
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(a.batch));
  switch (a.noise_mode) {
    case VIDGEN_NOISE_NONE: guided_step_kernel<T, VEC, VIDGEN_NOISE_NONE><<<grid, block, 0, stream>>>(a); break;
    case VIDGEN_NOISE_GIVEN: guided_step_kernel<T, VEC, VIDGEN_NOISE_GIVEN><<<grid, block, 0, stream>>>(a); break;
    default: guided_step_kernel<T, VEC, VIDGEN_NOISE_GENERATED><<<grid, block, 0, stream>>>(a); break;
  }
  return cuda_status(cudaGetLastError(), "guided_step_kernel launch");
}

bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T>
int dispatch_vector_width(const VidgenGuidedStepArgs& a, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  // A vector must not straddle rows (generated noise), scale frames or videos, and every pointer must
  // allow 16 B.
  const int64_t row = a.noise_mode == VIDGEN_NOISE_GENERATED ? a.post : a.pre * a.frames * a.post;
  const bool vectorized = row % kVec == 0 && (a.guidance_scales == nullptr || a.scale_post % kVec == 0) &&
                          aligned16(a.out) && aligned16(a.pred_original) &&
                          aligned16(a.sample) && aligned16(a.eps_cond) && aligned16(a.eps_uncond) &&
                          aligned16(a.prior_cond) && aligned16(a.noise);
  return vectorized ? launch<T, kVec>(a, stream) : launch<T, 1>(a, stream);
}

// Everything checkable without touching the device, so a bad call is a message, never a fault.
const char* invalid_arguments(const VidgenGuidedStepArgs* a) {
  if (a == nullptr) return "args is NULL";
  if (a->out == nullptr || a->sample == nullptr || a->eps_cond == nullptr)
    return "out, sample and eps_cond are required";
  if (a->batch <= 0 || a->pre <= 0 || a->frames <= 0 || a->post <= 0) return "every dimension must be positive";
  if (a->batch > 65535) return "batch exceeds 65535 (one grid row per video)";
  if (a->dtype < VIDGEN_FP32 || a->dtype > VIDGEN_BF16) return "dtype must be VIDGEN_FP32, VIDGEN_FP16 or VIDGEN_BF16";
  if (a->prediction < VIDGEN_EPSILON || a->prediction > VIDGEN_SAMPLE) return "unknown prediction type";
  if (a->rule != VIDGEN_RULE_DDIM && a->rule != VIDGEN_RULE_EULER) return "unknown step rule";
  if (a->rule == VIDGEN_RULE_EULER &&
      (a->noise_mode != VIDGEN_NOISE_NONE || a->inverse || a->use_clipped || a->clip_range < INFINITY))
    return "the Euler step takes no noise, clipping or inversion";
  if (a->noise_mode < VIDGEN_NOISE_NONE || a->noise_mode > VIDGEN_NOISE_GENERATED) return "unknown noise mode";
  if (a->noise_mode == VIDGEN_NOISE_GIVEN && a->noise == nullptr) return "noise_mode GIVEN needs a noise tensor";
  if (a->noise_kind < VIDGEN_NOISE_IID || a->noise_kind > VIDGEN_NOISE_PROGRESSIVE) return "unknown noise kind";
  if ((a->level_t_stride >= 0 && a->level_t_values == nullptr) ||
      (a->level_p_stride >= 0 && a->level_p_values == nullptr))
    return "a noise-level stride >= 0 needs its values pointer";
  if (a->guidance_scales != nullptr && (a->scale_frames <= 0 || a->scale_post <= 0))
    return "per-frame guidance scales need scale_frames > 0 and scale_post > 0";
  if (a->partials != nullptr && (a->eps_uncond == nullptr || a->pre * a->frames * a->post < 2))
    return "rescale (partials) needs eps_uncond and at least 2 elements per video";
  return nullptr;
}

}  // namespace
}  // namespace vidgen

extern "C" {

int vidgen_guided_step(const VidgenGuidedStepArgs* args, void* stream) {
  if (const char* problem = vidgen::invalid_arguments(args)) {
    vidgen::set_last_error(std::string("guided_step: ") + problem);
    return -1;
  }
  if (int status = vidgen::cuda_status(cudaSetDevice(args->device), "cudaSetDevice")) return status;
  const auto s = static_cast<cudaStream_t>(stream);
  switch (args->dtype) {
    case VIDGEN_FP16: return vidgen::dispatch_vector_width<__half>(*args, s);
    case VIDGEN_BF16: return vidgen::dispatch_vector_width<__nv_bfloat16>(*args, s);
    default: return vidgen::dispatch_vector_width<float>(*args, s);
  }
}

int64_t vidgen_guided_step_args_size(void) { return sizeof(VidgenGuidedStepArgs); }

int vidgen_philox_randn4x_host(uint64_t seed, const uint64_t* counters, int64_t n, uint32_t* words, float* normals) {
  if (counters == nullptr || n < 0) {
    vidgen::set_last_error("philox_randn4x_host: counters is NULL or n < 0");
    return -1;
  }
  for (int64_t i = 0; i < n; ++i) {
    if (words != nullptr) {
      const vidgen::Words4 w = vidgen::philox4x32_10(seed, counters[i]);
      for (int k = 0; k < 4; ++k) words[4 * i + k] = w.w[k];
    }
    if (normals != nullptr) {
      const vidgen::Normals4 z = vidgen::randn4x(seed, counters[i]);
      for (int k = 0; k < 4; ++k) normals[4 * i + k] = z.z[k];
    }
  }
  return 0;
}

}  // extern "C"
