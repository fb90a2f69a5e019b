// Triton's Philox4x32-10 + Box-Muller (tl.randn4x), bit-for-bit in the integer part, so CUDA
// kernels draw the same streams as the Triton kernels of vidgen.kernels.noise. Host and device:
// the host build backs vidgen_philox_randn4x_host, which tests run on machines without a GPU.
#pragma once
#include <stdint.h>
#include <math.h>

#if defined(__CUDACC__)
#define VIDGEN_HD __host__ __device__ __forceinline__
#else
#define VIDGEN_HD inline
#endif

namespace vidgen {

VIDGEN_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

struct Words4 { uint32_t w[4]; };
struct Normals4 { float z[4]; };

// Counter (c0, c1) = the 64-bit offset, (c2, c3) = 0; key = the 64-bit seed (lo, hi), as
// triton.language.random.randint4x does for an integer offset.
VIDGEN_HD Words4 philox4x32_10(uint64_t seed, uint64_t counter) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t old0 = c0, old2 = c2;
    c0 = mulhi32(0xCD9E8D57u, old2) ^ c1 ^ k0;
    c2 = mulhi32(0xD2511F53u, old0) ^ c3 ^ k1;
    c1 = 0xCD9E8D57u * old2;
    c3 = 0xD2511F53u * old0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {{c0, c1, c2, c3}};
}

// triton.language.random.uint_to_uniform_float for 32-bit words: [0, 1).
VIDGEN_HD float uniform_from_word(uint32_t word) {
  int32_t x = static_cast<int32_t>(word);
  x = x < 0 ? ~x : x;
  return static_cast<float>(x) * 4.6566127342e-10f;
}

VIDGEN_HD void box_muller(float u1, float u2, float& n1, float& n2) {
  u1 = fmaxf(1.0e-7f, u1);
  const float theta = 6.283185307179586f * u2;
  const float radius = sqrtf(-2.0f * logf(u1));
  n1 = radius * cosf(theta);
  n2 = radius * sinf(theta);
}

VIDGEN_HD Normals4 randn4x(uint64_t seed, uint64_t counter) {
  const Words4 words = philox4x32_10(seed, counter);
  Normals4 out;
  box_muller(uniform_from_word(words.w[0]), uniform_from_word(words.w[1]), out.z[0], out.z[1]);
  box_muller(uniform_from_word(words.w[2]), uniform_from_word(words.w[3]), out.z[2], out.z[3]);
  return out;
}

}  // namespace vidgen
