// backend.h: the abstract backend, one pure virtual method per op family of ops.h. A backend that
// misses an op does not compile. The CPU backend (native/cpu) is the reference; the CUDA backend
// (native/cuda) implements the same methods over device memory.
#pragma once
#include <memory>

#include "ops.h"

namespace step {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  virtual void gemm(const GemmParams& p) = 0;
  // A backend-specific, immutable copy of w (N, K) ready for gemm (GemmParams::w_packed); may return
  // null (then gemm packs per call). The form depends on the backend, not on the calling thread.
  virtual std::shared_ptr<const void> pack_weights(const float* w, int N, int K) = 0;
  virtual void conv(const ConvParams& p) = 0;
  virtual void avg_pool(const AvgPoolParams& p) = 0;
  virtual void layernorm(const LayerNormParams& p) = 0;
  virtual void attention(const AttentionParams& p) = 0;
  virtual void window_score(const WindowScoreParams& p) = 0;
  virtual void superpatch_select(const SuperpatchSelectParams& p) = 0;
  virtual void patch_gather(const PatchGatherParams& p) = 0;
  virtual void token_pos_embed(const TokenPosEmbedParams& p) = 0;
  virtual void unshare(const UnshareParams& p) = 0;
  virtual void token_halt(const TokenHaltParams& p) = 0;
  virtual void token_compact(const TokenCompactParams& p) = 0;
  virtual void token_scatter(const TokenScatterParams& p) = 0;
  virtual void token_rows_init(const TokenRowsInitParams& p) = 0;
  virtual void token_exit_mark(const TokenExitMarkParams& p) = 0;
  virtual void token_gather(const TokenGatherParams& p) = 0;
  virtual void token_pack(const TokenPackParams& p) = 0;
  virtual void pos_resample(const PosResampleParams& p) = 0;
  virtual void image_normalize(const ImageNormalizeParams& p) = 0;
  virtual void upsample(const UpsampleParams& p) = 0;
};

}  // namespace step
