// op_table.h: the one list of the ops of native/core/backend.h as the test exports see them. Each row
// names the op's stem (the Backend method), its parameter struct of ops.h, its JS name, and whether
// cudaOps has it (`cuda`) or only the CPU runs it (`none`). Every row gets:
//   read_<stem>(Call&)  the checked reader of its struct (op_params.cpp), declared below;
//   ops.<js>            the CPU backend's method (ops_binding.cpp);
//   cudaOps.<js>        prepare_<stem>(DeviceCall&) (cuda_prepare.cpp), for rows marked `cuda`.
// A row without its reader or CUDA entry does not link or compile; an op of backend.h without a row
// fails the static_assert below.
#pragma once
#include <memory>
#include <type_traits>

#include "../core/backend.h"
#include "../core/ops.h"

// X(stem, Params, js name, cuda | none)
#define STEP_OP_TABLE(X)                                                  \
  X(gemm, GemmParams, "gemm", cuda)                                       \
  X(conv, ConvParams, "conv", cuda)                                       \
  X(avg_pool, AvgPoolParams, "avgPool", cuda)                             \
  X(layernorm, LayerNormParams, "layernorm", cuda)                        \
  X(attention, AttentionParams, "attention", cuda)                        \
  X(window_score, WindowScoreParams, "windowScore", cuda)                 \
  X(superpatch_select, SuperpatchSelectParams, "superpatchSelect", cuda)  \
  X(patch_gather, PatchGatherParams, "patchGather", cuda)                 \
  X(token_pos_embed, TokenPosEmbedParams, "tokenPosEmbed", cuda)          \
  X(unshare, UnshareParams, "unshare", cuda)                              \
  X(token_halt, TokenHaltParams, "tokenHalt", cuda)                       \
  X(token_compact, TokenCompactParams, "tokenCompact", cuda)              \
  X(token_scatter, TokenScatterParams, "tokenScatter", cuda)              \
  X(token_rows_init, TokenRowsInitParams, "tokenRowsInit", cuda)         \
  X(token_exit_mark, TokenExitMarkParams, "tokenExitMark", cuda)         \
  X(token_gather, TokenGatherParams, "tokenGather", cuda)                 \
  X(token_pack, TokenPackParams, "tokenPack", cuda)                       \
  X(pos_resample, PosResampleParams, "posResample", none)                 \
  X(image_normalize, ImageNormalizeParams, "imageNormalize", cuda)        \
  X(upsample, UpsampleParams, "upsample", cuda)

namespace step::addon {

class Call;

#define STEP_OP_READER(stem, Params, js, backends) step::Params read_##stem(Call& call);
STEP_OP_TABLE(STEP_OP_READER)
#undef STEP_OP_READER

namespace op_table_check {
// Implements every Backend method from the table's rows (plus the two that are not ops): abstract,
// and so refused below, as soon as backend.h has an op the table lacks; an `override` of a row that
// backend.h lacks does not compile.
class EveryRow final : public step::Backend {
 public:
  const char* name() const override { return "op table"; }
  std::shared_ptr<const void> pack_weights(const float*, int, int) override { return nullptr; }
#define STEP_OP_OVERRIDE(stem, Params, js, backends) \
  void stem(const step::Params&) override {}
  STEP_OP_TABLE(STEP_OP_OVERRIDE)
#undef STEP_OP_OVERRIDE
};
static_assert(!std::is_abstract_v<EveryRow>, "an op of native/core/backend.h has no row in STEP_OP_TABLE (op_table.h)");
}  // namespace op_table_check

}  // namespace step::addon
