// upsample.cu: the CUDA side of upsample in native/cpu/upsample.cpp: bilinear resampling of one
// image's patch-grid logits (align_corners = False, clamped) to the output size, fused with the
// argmax over classes (lowest index on ties) and optionally the softmax probabilities.
//   upsample_kernel  one thread per output pixel (consecutive threads: consecutive x, so the planar
//                    probs stores coalesce). The taps are the CPU's double-precision formula, and every
//                    float step is the CPU's with explicit roundings (__fmul_rn, __fadd_rn: no fma
//                    contraction), so the interpolated logits, hence the labels, are bit-identical.
//                    With probs, the logits are recomputed per pass (argmax, sum of exponentials,
//                    output) instead of held in a K-long array: the same operations give the same bits.
//                    Probabilities differ from the CPU only through expf vs std::exp (2 ulp).
// Layout: logits (gh, gw, K), labels (out_h, out_w) int32, probs (K, out_h, out_w).
#include "common.cuh"
#include "launch.cuh"
#include "cuda_ops.h"

namespace step::cuda {
namespace {

constexpr int kThreads = 256;

struct UpsampleArgs {
  int K, gh, gw, patch, valid_h, valid_w, out_h, out_w;
  const float* logits;  // (gh, gw, K)
  int32_t* labels;      // (out_h, out_w)
  float* probs;         // (K, out_h, out_w) or null
};

struct Tap {
  int i0, i1;
  float w1;
};

// bilinear_taps of the CPU for one output coordinate, operation for operation.
__device__ __forceinline__ Tap upsample_tap(int x, int out, int valid, int grid, int patch) {
  const double scale = __ddiv_rn(__ddiv_rn(double(valid), double(out)), double(patch));
  double g = __dsub_rn(__dmul_rn(__dadd_rn(double(x), 0.5), scale), 0.5);
  g = fmax(g, 0.0);
  const int i0 = min(int(g), grid - 1);
  const int i1 = min(i0 + 1, grid - 1);
  return {i0, i1, float(__dsub_rn(g, double(i0)))};
}

__global__ void __launch_bounds__(kThreads) upsample_kernel(UpsampleArgs a) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y;
  if (x >= a.out_w) return;
  const int K = a.K;
  const Tap ty = upsample_tap(y, a.out_h, a.valid_h, a.gh, a.patch);
  const Tap tx = upsample_tap(x, a.out_w, a.valid_w, a.gw, a.patch);
  const float w00 = __fmul_rn(1 - ty.w1, 1 - tx.w1), w01 = __fmul_rn(1 - ty.w1, tx.w1);
  const float w10 = __fmul_rn(ty.w1, 1 - tx.w1), w11 = __fmul_rn(ty.w1, tx.w1);
  const float* r0 = a.logits + int64_t(ty.i0) * a.gw * K;  // (gw, K)
  const float* r1 = a.logits + int64_t(ty.i1) * a.gw * K;
  const float *l00 = r0 + int64_t(tx.i0) * K, *l01 = r0 + int64_t(tx.i1) * K;
  const float *l10 = r1 + int64_t(tx.i0) * K, *l11 = r1 + int64_t(tx.i1) * K;
  // ((w00 l00 + w01 l01) + w10 l10) + w11 l11, left to right as the CPU evaluates it.
  auto value = [&](int k) {
    float v = __fadd_rn(__fmul_rn(w00, l00[k]), __fmul_rn(w01, l01[k]));
    v = __fadd_rn(v, __fmul_rn(w10, l10[k]));
    return __fadd_rn(v, __fmul_rn(w11, l11[k]));
  };
  int best = 0;
  float top = value(0);
  for (int k = 1; k < K; ++k) {
    const float v = value(k);
    if (v > top) best = k, top = v;
  }
  const int64_t plane = int64_t(a.out_h) * a.out_w, pix = int64_t(y) * a.out_w + x;
  a.labels[pix] = best;
  if (!a.probs) return;
  float sum = 0.f;
  for (int k = 0; k < K; ++k) sum = __fadd_rn(sum, expf(__fsub_rn(value(k), top)));
  for (int k = 0; k < K; ++k) a.probs[k * plane + pix] = __fdiv_rn(expf(__fsub_rn(value(k), top)), sum);
}

void upsample_launch(const UpsampleArgs& a, cudaStream_t stream) {
  NvtxRange range("upsample");
  const dim3 grid(ceil_div(a.out_w, kThreads), a.out_h);
  launch<upsample_kernel>(grid, kThreads, 0, stream, a);
  STEP_CUDA_CHECK_LAUNCH();
}

}  // namespace

// ---- public entry -------------------------------------------------------------------------------

void upsample(const UpsampleParams& p, void* stream) {
  STEP_CHECK(p.K > 0 && p.gh > 0 && p.gw > 0 && p.patch > 0 && p.valid_h > 0 && p.valid_w > 0 && p.out_h >= 0 &&
                 p.out_w >= 0,
             "cuda::upsample: bad sizes");
  STEP_CHECK(p.out_h <= 65535, "cuda::upsample: out_h above 65535");
  if (p.out_h == 0 || p.out_w == 0) return;
  STEP_CHECK(p.logits && p.labels, "cuda::upsample: missing logits or labels");
  const UpsampleArgs a{p.K, p.gh, p.gw, p.patch, p.valid_h, p.valid_w, p.out_h, p.out_w, p.logits, p.labels, p.probs};
  upsample_launch(a, as_stream(stream));
}

}  // namespace step::cuda
