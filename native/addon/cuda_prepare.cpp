// cuda_prepare.cpp: the cudaOps entries (cuda_call.h), one prepare_<stem> per row of the op table
// (op_table.h) marked `cuda`: the op's reader (op_params.cpp) in device mode, then what only the CUDA
// op takes: the variant (`kernel`, read first, so a misspelt name throws before any copy), bf16
// twins, counts on the device and host bounds of the grid. Also DeviceCall's copies.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "cuda_call.h"
#include "op_table.h"

namespace step::addon {

// ---- DeviceCall -------------------------------------------------------------------------------------

void* DeviceCall::place(const char* key, uint8_t* host, size_t bytes, bool output) {
  for (Buffer& b : buffers_) {
    if (b.host == host && b.bytes == bytes) {  // the same JS memory twice: one device buffer
      b.output = b.output || output;
      return b.device.data();
    }
    if (bytes && b.bytes && host < b.host + b.bytes && b.host < host + bytes)
      fail_range(std::string(key) + " overlaps another array of this call; pass the same array or separate ones");
  }
  buffers_.push_back({host, bytes, step::cuda::DeviceBuffer(bytes), output});
  buffers_.back().device.upload(host);
  return buffers_.back().device.data();
}

const int32_t* DeviceCall::device_count(const char* key) {
  if (!has(key)) return nullptr;
  const int32_t value = integer(key);
  counts_.emplace_back(sizeof(int32_t));
  counts_.back().upload(&value);
  return static_cast<const int32_t*>(counts_.back().data());
}

void DeviceCall::download() {
  for (const Buffer& b : buffers_)
    if (b.output) b.device.download(b.host);
}

const char* layernorm_kernel_name(step::cuda::LayerNormKernel kernel) {
  switch (kernel) {
    case step::cuda::LayerNormKernel::kAuto: return "auto";
    case step::cuda::LayerNormKernel::kSimple: return "simple";
    case step::cuda::LayerNormKernel::kVec: return "vec";
  }
  return "unknown";
}

namespace {

namespace cuda = step::cuda;

// The variant named by `kernel`, among kinds whose names `name_of` gives.
template <typename Kernel, size_t kCount>
Kernel parse_kernel(const Call& call, const Kernel (&kinds)[kCount], const char* (*name_of)(Kernel)) {
  const std::string name = call.string_or("kernel", "auto");
  std::string known;
  for (Kernel k : kinds) {
    if (name == name_of(k)) return k;
    known += (known.empty() ? "'" : ", '") + std::string(name_of(k)) + "'";
  }
  call.fail_type("one of " + known, "kernel");
}

// ---- the ops: params -> launch, in op_table.h's order ----------------------------------------------

// The ops without CUDA-only options: the reader, then the launch.
template <auto read, auto op>
Launch prepare_plain(DeviceCall& call) {
  const auto p = read(call);
  return [p](void* stream) { op(p, stream); };
}
constexpr auto prepare_conv = prepare_plain<read_conv, cuda::conv>;
constexpr auto prepare_avg_pool = prepare_plain<read_avg_pool, cuda::avg_pool>;
constexpr auto prepare_superpatch_select = prepare_plain<read_superpatch_select, cuda::superpatch_select>;
constexpr auto prepare_image_normalize = prepare_plain<read_image_normalize, cuda::image_normalize>;
constexpr auto prepare_upsample = prepare_plain<read_upsample, cuda::upsample>;
constexpr auto prepare_token_pack = prepare_plain<read_token_pack, cuda::token_pack>;

Launch prepare_gemm(DeviceCall& call) {
  cuda::GemmDeviceExtras x;
  static constexpr cuda::GemmKernel kKinds[] = {cuda::GemmKernel::kAuto, cuda::GemmKernel::kSimple,
                                                cuda::GemmKernel::kMma128x128, cuda::GemmKernel::kMma128x64,
                                                cuda::GemmKernel::kMma64x64};
  x.kernel = parse_kernel(call, kKinds, cuda::gemm_kernel_name);
  const step::GemmParams p = read_gemm(call);
  const int64_t c_elems = span(p.M, p.ldc, p.N);
  x.a_bf16 = call.array<uint16_t>("a", span(p.M, p.lda, p.K), Use::kIn);
  x.w_bf16 = call.array<uint16_t>("w", int64_t(p.N) * p.K, Use::kIn);
  x.c_bf16 = call.array<uint16_t>("cBf16", c_elems, Use::kOptionalOut);
  x.m_device = call.device_count("mDevice");
  return [p, x](void* stream) { cuda::gemm(p, x, stream); };
}

Launch prepare_layernorm(DeviceCall& call) {
  cuda::LayerNormDeviceExtras x;
  static constexpr cuda::LayerNormKernel kKinds[] = {cuda::LayerNormKernel::kAuto, cuda::LayerNormKernel::kSimple,
                                                     cuda::LayerNormKernel::kVec};
  x.kernel = parse_kernel(call, kKinds, layernorm_kernel_name);
  const step::LayerNormParams p = read_layernorm(call);
  x.y_bf16 = call.array<uint16_t>("yBf16", int64_t(p.rows) * p.C, Use::kOptionalOut);
  x.rows_device = call.device_count("rowsDevice");
  return [p, x](void* stream) { cuda::layernorm(p, x, stream); };
}

Launch prepare_attention(DeviceCall& call) {
  cuda::AttentionDeviceExtras x;
  static constexpr cuda::AttentionKernel kKinds[] = {cuda::AttentionKernel::kAuto, cuda::AttentionKernel::kNaive,
                                                     cuda::AttentionKernel::kFlash};
  x.kernel = parse_kernel(call, kKinds, cuda::attention_kernel_name);
  const step::AttentionParams p = read_attention(call);
  const PackedRows rows = check_offsets(call, p.batch);
  const int64_t C = int64_t(p.heads) * p.head_dim;
  x.max_seqlen = call.integer_or("maxSeqlen", rows.max_t);
  x.qkv_bf16 = call.array<uint16_t>("qkvBf16", rows.rows * 3 * C, Use::kOptionalIn);
  x.out_bf16 = call.array<uint16_t>("outBf16", rows.rows * C, Use::kOptionalOut);
  return [p, x](void* stream) { cuda::attention(p, x, stream); };
}

Launch prepare_window_score(DeviceCall& call) {
  const step::WindowScoreParams p = read_window_score(call);
  auto workspace = std::make_shared<cuda::DeviceBuffer>(
      size_t(cuda::window_score_workspace_floats(p.gh, p.gw)) * sizeof(float));
  cuda::WindowScoreDeviceExtras x;
  x.workspace = static_cast<float*>(workspace->data());
  return [p, x, workspace](void* stream) { cuda::window_score(p, x, stream); };
}

// The ops whose CUDA-only options need no check before the reader: the reader, `extras`, the launch.
template <auto read, auto extras, auto op>
Launch prepare_with(DeviceCall& call) {
  const auto p = read(call);
  const auto x = extras(call, p);
  return [p, x](void* stream) { op(p, x, stream); };
}

cuda::PatchGatherDeviceExtras patch_gather_extras(DeviceCall& call, const step::PatchGatherParams& p) {
  return {call.device_count("tokensDevice"),
          call.array<uint16_t>("outBf16", p.tokens * 3 * int64_t(p.patch) * p.patch, Use::kOptionalOut)};
}
cuda::TokenPosEmbedDeviceExtras token_pos_embed_extras(DeviceCall& call, const step::TokenPosEmbedParams& p) {
  return {call.integer_or("rowsBound", int(check_offsets(call, p.batch).rows))};
}
cuda::UnshareDeviceExtras unshare_extras(DeviceCall& call, const step::UnshareParams&) {
  return {call.device_count("tokensDevice")};
}
cuda::TokenHaltDeviceExtras token_halt_extras(DeviceCall& call, const step::TokenHaltParams& p) {
  const int max_seqlen = call.integer_or("maxSeqlen", check_offsets(call, p.batch).max_t);
  if (max_seqlen > cuda::token_halt_max_rows())
    call.fail_range("maxSeqlen " + std::to_string(max_seqlen) + " is above token_halt_max_rows() = " +
                    std::to_string(cuda::token_halt_max_rows()));
  return {max_seqlen};
}
cuda::TokenCompactDeviceExtras token_compact_extras(DeviceCall& call, const step::TokenCompactParams& p) {
  return {call.integer_or("rowsBound", int(check_offsets(call, p.batch).rows))};
}
cuda::TokenScatterDeviceExtras token_scatter_extras(DeviceCall& call, const step::TokenScatterParams&) {
  return {call.device_count("rowsDevice")};
}
cuda::TokenRowsInitDeviceExtras token_rows_init_extras(DeviceCall& call, const step::TokenRowsInitParams& p) {
  const int rows = int(check_offsets(call, p.batch).rows);
  return {call.integer_or("rowsBound", rows, rows)};
}
cuda::TokenExitMarkDeviceExtras token_exit_mark_extras(DeviceCall& call, const step::TokenExitMarkParams&) {
  return {call.device_count("rowsDevice")};
}
cuda::TokenGatherDeviceExtras token_gather_extras(DeviceCall& call, const step::TokenGatherParams&) {
  return {call.device_count("rowsDevice")};
}
constexpr auto prepare_patch_gather = prepare_with<read_patch_gather, patch_gather_extras, cuda::patch_gather>;
constexpr auto prepare_token_pos_embed =
    prepare_with<read_token_pos_embed, token_pos_embed_extras, cuda::token_pos_embed>;
constexpr auto prepare_unshare = prepare_with<read_unshare, unshare_extras, cuda::unshare>;
constexpr auto prepare_token_halt = prepare_with<read_token_halt, token_halt_extras, cuda::token_halt>;
constexpr auto prepare_token_compact = prepare_with<read_token_compact, token_compact_extras, cuda::token_compact>;
constexpr auto prepare_token_scatter = prepare_with<read_token_scatter, token_scatter_extras, cuda::token_scatter>;
constexpr auto prepare_token_rows_init = prepare_with<read_token_rows_init, token_rows_init_extras, cuda::token_rows_init>;
constexpr auto prepare_token_exit_mark = prepare_with<read_token_exit_mark, token_exit_mark_extras, cuda::token_exit_mark>;
constexpr auto prepare_token_gather = prepare_with<read_token_gather, token_gather_extras, cuda::token_gather>;

// Not an op of ops.h: the float32 -> bf16 conversion the CUDA model runs between buffers.
Launch prepare_convert_to_bf16(DeviceCall& call) {
  const int64_t n = call.length<float>("x");
  const float* x = call.array<float>("x", n, Use::kIn);
  uint16_t* y = call.array<uint16_t>("y", n, Use::kOut);
  return [x, y, n](void* stream) { cuda::convert_to_bf16(x, y, n, stream); };
}

}  // namespace

// Rows marked `cuda` get their prepare_<stem>; rows marked `none` run on the CPU only.
#define STEP_CUDA_OP_cuda(stem, js) {js, prepare_##stem},
#define STEP_CUDA_OP_none(stem, js)
#define STEP_CUDA_OP(stem, Params, js, backends) STEP_CUDA_OP_##backends(stem, js)
const CudaOp kCudaOps[] = {STEP_OP_TABLE(STEP_CUDA_OP){"convertToBf16", prepare_convert_to_bf16}};
#undef STEP_CUDA_OP
#undef STEP_CUDA_OP_none
#undef STEP_CUDA_OP_cuda
const size_t kCudaOpCount = sizeof(kCudaOps) / sizeof(kCudaOps[0]);

}  // namespace step::addon
