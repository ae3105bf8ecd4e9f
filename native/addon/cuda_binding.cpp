// cuda_binding.cpp: `cudaOps`, the public entries of native/cuda/cuda_ops.h as synchronous JS functions
// for the CUDA op tests (test/ops/<stem>.test.ts) and the benchmark (scripts/bench-cuda.ts). Not part of
// the package's API: lib/ never calls it. Compiled only with the CUDA backend (CMakeLists.txt; addon.cpp
// calls register_cuda_ops under STEP_SEG_HAVE_CUDA). No CUDA header here: device memory and timing come
// from native/cuda/test_support.h. The entries are the op table's (op_table.h): each op's params are
// read by the same checked reader as ops.<name> on the CPU (op_params.cpp), in device mode, plus the
// CUDA-only options (cuda_prepare.cpp).
//
// One call: every typed array of the params object is copied to a device buffer of its own (an array
// passed twice, such as gemm's residual and c, becomes one buffer, so aliasing survives), the op runs on
// the legacy default stream with the variant named by `kernel`, the device is synchronised, and the
// output arrays are copied back over the JS ones whole: elements the op must not write come back as
// they went, poison included. Then everything is freed.
// dtypes, as in native/core/ops.h: float32 Float32Array, bf16 Uint16Array (raw bits), int32 Int32Array,
// uint8 Uint8Array, token rects Int32Array (image, row, col, size per rect). Device-side counts (mDevice,
// rowsDevice, tokensDevice) are plain numbers here, uploaded as one int32.
// Sizes and indices are checked before any device work, because a kernel that reads past a buffer
// leaves the CUDA context unusable for every later test: TypeError / RangeError naming the option. A
// failure of the op itself (a forced variant that cannot run the shape, a CUDA error) throws an Error
// with the engine's message and `code` (ERR_STEP_INTERNAL, ERR_STEP_OUT_OF_MEMORY).
//
// cudaOps:
//   gemm({ M, N, K, a: bf16, lda?, w: bf16, bias?, epilogue?, residual?, colScale?, c? | cBf16?, ldc?, mDevice?, kernel? })
//   attention({ batch, offsets, heads, headDim, scale, qkv? | qkvBf16?, out? | outBf16?, maxSeqlen?, kernel? })
//   layernorm({ rows, C, eps?, x, gamma, beta, y?, yBf16?, rowsDevice?, kernel? })
//   convertToBf16({ x, y })
//   imageNormalize({ src, h, w, channels, mean: [3], std: [3], outH?, outW?, out })     planar out only
//   patchGather({ images, height, width, patch, pixels, tokens, rects, out?, outBf16?, tokensDevice? })
//   tokenPosEmbed({ batch, C, prefix, prefixTokens?, posPrefix?, posGrid, gridOffset, gridW, offsets,
//                   rects, embedded, out, rowsBound? })
//   windowScore({ image, h, w, channels?, patch, gh, gw, levels, colorTau, textureTau, scores })
//   superpatchSelect({ image?, gh, gw, levels, thresholds, scores, rects, count, tokenOfPatch })
//   unshare({ K, tokens, rects, logits, gridOffset, gridW, grid, mode: 'copy' | 'blend', gridH?, flat?, tokensDevice? })
//   tokenHalt({ batch, K, prefix?, offsets, logits, threshold, topK, halt, maxSeqlen?,
//               rectOfRow?, rects?, gridOffset?, gridH?, gridW?, cellLabel? })
//   tokenCompact({ batch, C, offsets, halt, x, out, newOffsets, srcRow, rowsBound? })
//   tokenScatter({ rows, K, src, index, mask?, table, rowsDevice? })
//   tokenRowsInit({ batch, prefix?, depth, offsets, rectOfRow, rectExit, rowsBound? })
//   tokenExitMark({ rows, layer, halt, rectOfRow, rectExit, rowsDevice? })
//   tokenGather({ rows, srcRow, in, out, rowsDevice? })
//   tokenPack({ batch, prefix?, counts, gridOffset, stage, rects, offsets, rectCount })
//   upsample({ K, gh, gw, patch, logits, validH, validW, outH, outW, labels, probs? })
//   conv({ batch, inH, inW, inC, outC, kernel, stride, pad, groups?, act?, x, w, bias?, y })   (outH?, outW? derived)
//   avgPool({ inH, inW, C, factor, outH?, outW?, x, y })
//   time(name, params, iterations) -> median ms of cudaOps[name](params) (test_support.h; no copy back)
//   chooseGemm(M, N, K, aligned?), chooseAttention(D, aligned?), chooseLayernorm(C, aligned?) -> variant
//   cpuImageNormalize(params): the CPU op on the same params (plus channelsLast?), as ops.imageNormalize:
//     the bit-identity test wants the CPU code itself as the reference.
// Settings the engine always receives from lib/ (colorTau, textureTau, threshold, topK) have no default
// here either; layernorm's eps, optional for the op tests, defaults to op_params.cpp's kDefaultLayerNormEps.
// kernel: 'auto' (the op's choose_<op>_kernel) or a variant: gemm 'simple' | 'mma128x128' | 'mma128x64'
// | 'mma64x64', attention 'naive' | 'flash', layernorm 'simple' | 'vec'.
#include <napi.h>

#include <cmath>
#include <string>

#include "../cpu/cpu_backend.h"
#include "../cuda/cuda_ops.h"
#include "../cuda/device_model.h"
#include "../cuda/test_support.h"
#include "cuda_call.h"
#include "guarded.h"
#include "op_table.h"

namespace {

namespace cuda = step::cuda;
using step::addon::CudaOp;
using step::addon::DeviceCall;
using step::addon::describe;
using step::addon::kCudaOps;
using step::addon::kCudaOpCount;
using step::addon::Launch;

// ---- exports --------------------------------------------------------------------------------------

using step::addon::guarded;

// cudaOps.<name>(params): info.Data() is the op's CudaOp.
Napi::Value run_op(const Napi::CallbackInfo& info) {
  const CudaOp& op = *static_cast<const CudaOp*>(info.Data());
  return guarded(info.Env(), [&]() -> Napi::Value {
    DeviceCall call(info[0], std::string("cudaOps.") + op.name);
    const Launch launch = op.prepare(call);
    launch(nullptr);
    cuda::device_synchronize();
    call.download();
    return info.Env().Undefined();
  });
}

// cudaOps.time(name, params, iterations) -> median ms.
Napi::Value time_op(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
  const CudaOp* op = nullptr;
  std::string known;
  for (size_t i = 0; i < kCudaOpCount; ++i) {
    const CudaOp& e = kCudaOps[i];
    if (name == e.name) op = &e;
    known += (known.empty() ? "'" : ", '") + std::string(e.name) + "'";
  }
  if (!op) throw Napi::TypeError::New(env, "cudaOps.time: expected one of " + known + " for name but received " + describe(info[0]));
  const double iterations = info[2].IsNumber() ? info[2].As<Napi::Number>().DoubleValue() : NAN;
  if (!(iterations >= 1 && iterations <= 100000 && iterations == std::floor(iterations)))
    throw Napi::TypeError::New(env, "cudaOps.time: expected an integer in 1..100000 for iterations but received " +
                                        describe(info[2]));
  return guarded(env, [&]() -> Napi::Value {
    DeviceCall call(info[1], std::string("cudaOps.") + op->name);
    const Launch launch = op->prepare(call);
    return Napi::Number::New(env, cuda::time_median_ms(launch, int(iterations), 2));
  });
}

// cudaOps.cpuImageNormalize(params): the CPU reference, same params as cudaOps.imageNormalize (plus
// `channelsLast`).
Napi::Value cpu_image_normalize(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    step::addon::Call call(info[0], "cudaOps.cpuImageNormalize");
    step::cpu::image_normalize(step::addon::read_image_normalize(call));
    return info.Env().Undefined();
  });
}

// Integer argument i of a choose* function, at least min.
int int_arg(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* what, int min) {
  const double d = info[i].IsNumber() ? info[i].As<Napi::Number>().DoubleValue() : NAN;
  if (!(d >= min && d <= 2147483647.0 && d == std::floor(d)))
    throw Napi::TypeError::New(info.Env(), std::string("cudaOps.") + fn + ": expected an integer >= " +
                                               std::to_string(min) + " for " + what + " but received " + describe(info[i]));
  return int(d);
}
bool aligned_arg(const Napi::CallbackInfo& info, size_t i) {
  return info.Length() <= i || info[i].IsUndefined() || info[i].ToBoolean().Value();
}

Napi::Value choose_gemm(const Napi::CallbackInfo& info) {
  const int M = int_arg(info, 0, "chooseGemm", "M", 0), N = int_arg(info, 1, "chooseGemm", "N", 0);
  const int K = int_arg(info, 2, "chooseGemm", "K", 0);
  return Napi::String::New(info.Env(), cuda::gemm_kernel_name(cuda::choose_gemm_kernel(M, N, K, aligned_arg(info, 3))));
}

Napi::Value choose_attention(const Napi::CallbackInfo& info) {
  const int D = int_arg(info, 0, "chooseAttention", "D", 1);
  return Napi::String::New(info.Env(), cuda::attention_kernel_name(cuda::choose_attention_kernel(D, aligned_arg(info, 1))));
}

Napi::Value choose_layernorm(const Napi::CallbackInfo& info) {
  const int C = int_arg(info, 0, "chooseLayernorm", "C", 1);
  return Napi::String::New(info.Env(), step::addon::layernorm_kernel_name(cuda::choose_layernorm_kernel(C, aligned_arg(info, 1))));
}

// memoryInfo() -> { free, total } bytes of GPU 0 ({0, 0} without a usable GPU): the dispose test and
// the benchmark measure what a model holds with it.
Napi::Value memory_info(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const cuda::DeviceMemoryInfo m = cuda::device_memory_info();
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("free", double(m.free)), o.Set("total", double(m.total));
    return o;
  });
}

}  // namespace

// Called by addon.cpp's init when the CUDA backend is compiled in: sets exports.cudaOps.
void register_cuda_ops(Napi::Env env, Napi::Object exports) {
  Napi::Object ops = Napi::Object::New(env);
  for (size_t i = 0; i < kCudaOpCount; ++i)
    ops.Set(kCudaOps[i].name, Napi::Function::New(env, run_op, kCudaOps[i].name, const_cast<CudaOp*>(&kCudaOps[i])));
  ops.Set("time", Napi::Function::New(env, time_op, "time"));
  ops.Set("chooseGemm", Napi::Function::New(env, choose_gemm, "chooseGemm"));
  ops.Set("chooseAttention", Napi::Function::New(env, choose_attention, "chooseAttention"));
  ops.Set("chooseLayernorm", Napi::Function::New(env, choose_layernorm, "chooseLayernorm"));
  ops.Set("cpuImageNormalize", Napi::Function::New(env, cpu_image_normalize, "cpuImageNormalize"));
  ops.Set("memoryInfo", Napi::Function::New(env, memory_info, "memoryInfo"));
  exports.Set("cudaOps", ops);
}
