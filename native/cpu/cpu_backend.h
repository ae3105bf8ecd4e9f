// cpu_backend.h: the reference backend. float32 on the host, multithreaded with parallel.h; each op
// family lives in its own file (gemm.cpp, conv.cpp, norm.cpp, attention.cpp, token_merge.cpp, token_compact.cpp, elementwise.cpp,
// upsample.cpp) and is the specification the CUDA backend is tested against.
#pragma once
#include "../core/backend.h"

namespace step::cpu {

void gemm(const GemmParams& p);
// W (N, K) packed as gemm() packs it per call, for the micro-kernel this process runs.
std::shared_ptr<const void> pack_weights(const float* w, int N, int K);
void conv(const ConvParams& p);
void avg_pool(const AvgPoolParams& p);
void layernorm(const LayerNormParams& p);
void attention(const AttentionParams& p);
void window_score(const WindowScoreParams& p);
void superpatch_select(const SuperpatchSelectParams& p);
void patch_gather(const PatchGatherParams& p);
void token_pos_embed(const TokenPosEmbedParams& p);
void unshare(const UnshareParams& p);
void token_halt(const TokenHaltParams& p);
void token_compact(const TokenCompactParams& p);
void token_scatter(const TokenScatterParams& p);
void pos_resample(const PosResampleParams& p);
void image_normalize(const ImageNormalizeParams& p);
void upsample(const UpsampleParams& p);

// Which GEMM micro-kernel runs on this machine ("avx512", "avx2", "generic"); chosen once at run time.
const char* gemm_kernel_name();

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }
  void gemm(const GemmParams& p) override { cpu::gemm(p); }
  std::shared_ptr<const void> pack_weights(const float* w, int N, int K) override {
    return cpu::pack_weights(w, N, K);
  }
  void conv(const ConvParams& p) override { cpu::conv(p); }
  void avg_pool(const AvgPoolParams& p) override { cpu::avg_pool(p); }
  void layernorm(const LayerNormParams& p) override { cpu::layernorm(p); }
  void attention(const AttentionParams& p) override { cpu::attention(p); }
  void window_score(const WindowScoreParams& p) override { cpu::window_score(p); }
  void superpatch_select(const SuperpatchSelectParams& p) override { cpu::superpatch_select(p); }
  void patch_gather(const PatchGatherParams& p) override { cpu::patch_gather(p); }
  void token_pos_embed(const TokenPosEmbedParams& p) override { cpu::token_pos_embed(p); }
  void unshare(const UnshareParams& p) override { cpu::unshare(p); }
  void token_halt(const TokenHaltParams& p) override { cpu::token_halt(p); }
  void token_compact(const TokenCompactParams& p) override { cpu::token_compact(p); }
  void token_scatter(const TokenScatterParams& p) override { cpu::token_scatter(p); }
  void pos_resample(const PosResampleParams& p) override { cpu::pos_resample(p); }
  void image_normalize(const ImageNormalizeParams& p) override { cpu::image_normalize(p); }
  void upsample(const UpsampleParams& p) override { cpu::upsample(p); }
};

}  // namespace step::cpu
