// cpu_backend.h: the reference backend. float32 on the host, multithreaded with parallel.h; each op
// family lives in its own file (gemm.cpp, conv.cpp, norm.cpp, attention.cpp, token_merge.cpp, token_compact.cpp, elementwise.cpp,
// upsample.cpp) and is the specification the CUDA backend is tested against.
#pragma once
#include <cstring>

#include "../core/backend.h"

namespace step::cpu {

// precision kBf16: bfloat16 operands, float32 accumulation, where the CPU has a bfloat16 kernel
// (gemm_kernel_name(kBf16) != "none"); float32 otherwise.
void gemm(const GemmParams& p, Precision precision = Precision::kFp32);
// W (N, K) packed as gemm() packs it per call, for the micro-kernel this process runs at `precision`.
std::shared_ptr<const void> pack_weights(const float* w, int N, int K,
                                         Precision precision = Precision::kFp32);
void conv(const ConvParams& p);
void avg_pool(const AvgPoolParams& p);
void layernorm(const LayerNormParams& p);
void attention(const AttentionParams& p, Precision precision = Precision::kFp32);
void window_score(const WindowScoreParams& p);
void superpatch_select(const SuperpatchSelectParams& p);
void patch_gather(const PatchGatherParams& p);
void token_pos_embed(const TokenPosEmbedParams& p);
void unshare(const UnshareParams& p);
void token_halt(const TokenHaltParams& p);
void token_compact(const TokenCompactParams& p);
void token_scatter(const TokenScatterParams& p);
void token_rows_init(const TokenRowsInitParams& p);
void token_exit_mark(const TokenExitMarkParams& p);
void token_gather(const TokenGatherParams& p);
void token_pack(const TokenPackParams& p);
void pos_resample(const PosResampleParams& p);
void image_normalize(const ImageNormalizeParams& p);
void upsample(const UpsampleParams& p);

// Which GEMM micro-kernel runs on this machine, chosen once at run time: float32 "avx512", "avx2" or
// "generic"; bfloat16 "avx512bf16" (vdpbf16ps), "bf16-generic" (the portable twin, only when
// STEP_SEG_BF16_KERNEL=generic forces it) or "none" (bf16 runs as float32).
const char* gemm_kernel_name(Precision precision = Precision::kFp32);

// One backend per precision; "cpu-bf16" runs gemm and attention in bfloat16 where the CPU can
// (precision() says what runs), the other ops as "cpu" does.
class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(Precision precision = Precision::kFp32)
      : precision_(std::strcmp(gemm_kernel_name(precision), "none") == 0 ? Precision::kFp32 : precision) {}
  const char* name() const override { return precision_ == Precision::kBf16 ? "cpu-bf16" : "cpu"; }
  Precision precision() const { return precision_; }
  void gemm(const GemmParams& p) override { cpu::gemm(p, precision_); }
  std::shared_ptr<const void> pack_weights(const float* w, int N, int K) override {
    return cpu::pack_weights(w, N, K, precision_);
  }
  void conv(const ConvParams& p) override { cpu::conv(p); }
  void avg_pool(const AvgPoolParams& p) override { cpu::avg_pool(p); }
  void layernorm(const LayerNormParams& p) override { cpu::layernorm(p); }
  void attention(const AttentionParams& p) override { cpu::attention(p, precision_); }
  void window_score(const WindowScoreParams& p) override { cpu::window_score(p); }
  void superpatch_select(const SuperpatchSelectParams& p) override { cpu::superpatch_select(p); }
  void patch_gather(const PatchGatherParams& p) override { cpu::patch_gather(p); }
  void token_pos_embed(const TokenPosEmbedParams& p) override { cpu::token_pos_embed(p); }
  void unshare(const UnshareParams& p) override { cpu::unshare(p); }
  void token_halt(const TokenHaltParams& p) override { cpu::token_halt(p); }
  void token_compact(const TokenCompactParams& p) override { cpu::token_compact(p); }
  void token_scatter(const TokenScatterParams& p) override { cpu::token_scatter(p); }
  void token_rows_init(const TokenRowsInitParams& p) override { cpu::token_rows_init(p); }
  void token_exit_mark(const TokenExitMarkParams& p) override { cpu::token_exit_mark(p); }
  void token_gather(const TokenGatherParams& p) override { cpu::token_gather(p); }
  void token_pack(const TokenPackParams& p) override { cpu::token_pack(p); }
  void pos_resample(const PosResampleParams& p) override { cpu::pos_resample(p); }
  void image_normalize(const ImageNormalizeParams& p) override { cpu::image_normalize(p); }
  void upsample(const UpsampleParams& p) override { cpu::upsample(p); }

 private:
  Precision precision_;
};

}  // namespace step::cpu
