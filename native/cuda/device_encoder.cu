// device_encoder.cu: forward() and the encoder on the GPU (see device_model.h): the patch embedding,
// the blocks, the early exits with their halting and compaction of the packed token list, the head and
// unsharing, and the stats of a call (fill_stats) as the CPU computes them. One backend call of
// model.cpp is one kernel entry of cuda_ops.h here, in the same order, so the two read side by side.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "../core/cost.h"
#include "device_model_impl.cuh"

namespace step::cuda::device_model_detail {
void CudaVitModel::encode(const CallShape& sh, Buffers& w, const std::vector<int>& exit_layers,
                          const PruneSettings& prune, UnshareMode unshare_mode, bool graph, std::vector<cudaEvent_t>* group_events,
                          std::vector<std::string>* group_names) {
  const VitConfig& c = model_.config();
  const int B = sh.B, C = c.embed_dim, P = c.patch, pre = c.prefix(), K = c.num_classes;
  const int Tp = sh.tp_bound, A0 = sh.a_bound, max_t = sh.max_t;
  cudaStream_t s = stream_;
  auto group_done = [&](std::string name) {
    if (graph) return;
    cudaEvent_t ev;
    STEP_CUDA_CHECK(cudaEventCreate(&ev));
    group_events->push_back(ev);
    STEP_CUDA_CHECK(cudaEventRecord(ev, s));
    group_names->push_back(std::move(name));
  };

  {
    TokenRowsInitParams p;
    p.batch = B, p.prefix = pre, p.depth = c.depth, p.offsets = w.offsets[0];
    p.rect_of_row = w.rect_of_row[0], p.rect_exit = w.rect_exit;
    TokenRowsInitDeviceExtras e;
    e.rows_bound = A0;
    token_rows_init(p, e, s);
  }
  // Patch embedding: im2col of every rect (bf16), one GEMM with the conv weight.
  {
    PatchGatherParams g;
    g.images = B, g.height = sh.H, g.width = sh.W, g.patch = P, g.pixels = w.pixels;
    g.tokens = Tp, g.rects = w.rects;
    PatchGatherDeviceExtras x;
    x.out_bf16 = w.cols, x.tokens_device = w.rect_count;
    patch_gather(g, x, s);
  }
  auto gemm_run = [&](const Linear& l, const uint16_t* a, int M, const int32_t* m_device, float* c_f32, uint16_t* c_bf16,
                      Epilogue ep, const float* scale) {
    GemmParams g;
    g.M = M, g.N = l.N, g.K = l.K, g.lda = l.K, g.ldc = l.N, g.bias = l.b.as<float>(), g.epilogue = ep;
    g.residual = ep == Epilogue::kResidual ? c_f32 : nullptr, g.col_scale = scale, g.c = c_f32;
    GemmDeviceExtras x;
    x.a_bf16 = a, x.w_bf16 = l.w.as<uint16_t>(), x.c_bf16 = c_bf16, x.m_device = m_device;
    gemm(g, x, s);
  };
  gemm_run(patch_w_, w.cols, Tp, w.rect_count, w.embedded, nullptr, Epilogue::kNone, nullptr);

  int cur = 0;  // which offsets / rect_of_row buffer holds the live list
  float* x = w.x[0];
  {
    TokenPosEmbedParams t;
    t.batch = B, t.C = C, t.prefix = pre, t.prefix_tokens = prefix_tokens_.as<float>();
    t.pos_prefix = pos_prefix_.as<float>(), t.pos_grid = w.pos, t.grid_offset = w.grid_offset, t.grid_w = w.grid_w;
    t.offsets = w.offsets[0], t.rects = w.rects, t.embedded = w.embedded, t.out = x;
    TokenPosEmbedDeviceExtras e;
    e.rows_bound = A0;
    token_pos_embed(t, e, s);
  }
  auto layernorm_run = [&](const float* src, const Norm& n, float* y, uint16_t* y_bf16) {
    LayerNormParams p;
    p.rows = A0, p.C = C, p.eps = c.norm_eps, p.x = src, p.gamma = n.gamma.as<float>(), p.beta = n.beta.as<float>();
    p.y = y;
    LayerNormDeviceExtras e;
    e.rows_device = w.offsets[cur] + B, e.y_bf16 = y_bf16;
    layernorm(p, e, s);
  };
  if (c.pre_norm) {  // into the other stream buffer (LayerNorm does not run in place)
    layernorm_run(x, norm_pre_, w.x[1], nullptr);
    x = w.x[1];
  }
  auto snapshot_offsets = [&](int i) {
    STEP_CUDA_CHECK(cudaMemcpyAsync(w.block_offsets + int64_t(i) * (B + 1), w.offsets[cur], size_t(B + 1) * 4,
                                    cudaMemcpyDeviceToDevice, s));
  };
  int group_start = 0;
  for (int i = 0; i < c.depth; ++i) {
    const Block& blk = blocks_[size_t(i)];
    const int32_t* rows = w.offsets[cur] + B;
    snapshot_offsets(i);
    layernorm_run(x, blk.norm1, nullptr, w.h);
    gemm_run(blk.qkv, w.h, A0, rows, nullptr, w.qkv, Epilogue::kNone, nullptr);
    {
      AttentionParams p;
      p.batch = B, p.offsets = w.offsets[cur], p.heads = c.heads, p.head_dim = C / c.heads;
      p.scale = 1.f / std::sqrt(float(C / c.heads));
      AttentionDeviceExtras e;
      e.max_seqlen = max_t, e.qkv_bf16 = w.qkv, e.out_bf16 = w.att;
      attention(p, e, s);
    }
    gemm_run(blk.proj, w.att, A0, rows, x, nullptr, Epilogue::kResidual, blk.ls1.as<float>());
    layernorm_run(x, blk.norm2, nullptr, w.h);
    gemm_run(blk.fc1, w.h, A0, rows, nullptr, w.mlp, Epilogue::kGelu, nullptr);
    gemm_run(blk.fc2, w.mlp, A0, rows, x, nullptr, Epilogue::kResidual, blk.ls2.as<float>());

    if (std::find(exit_layers.begin(), exit_layers.end(), i + 1) == exit_layers.end()) continue;
    auto eh = exits_.find(i + 1);
    STEP_CHECK(eh != exits_.end(), "exit head " + std::to_string(i + 1) + " not uploaded");
    NvtxRange range_exit(("exit " + std::to_string(i + 1)).c_str());
    layernorm_run(x, eh->second.norm, nullptr, w.h);
    gemm_run(eh->second.head, w.h, A0, rows, w.logits, nullptr, Epilogue::kNone, nullptr);
    {
      TokenHaltParams p;
      p.batch = B, p.K = K, p.prefix = pre, p.offsets = w.offsets[cur], p.logits = w.logits;
      p.threshold = prune.threshold, p.top_k = prune.top_k, p.halt = w.halt;
      if (prune.agree == 1) {
        p.rect_of_row = w.rect_of_row[cur], p.rects = w.rects, p.grid_offset = w.grid_offset;
        p.grid_h = w.grid_h, p.grid_w = w.grid_w, p.cell_label = w.cell_label;
      }
      TokenHaltDeviceExtras e;
      e.max_seqlen = max_t;
      token_halt(p, e, s);
    }
    {
      TokenScatterParams p;
      p.rows = A0, p.K = K, p.src = w.logits, p.index = w.rect_of_row[cur], p.mask = w.halt, p.table = w.rect_logits;
      TokenScatterDeviceExtras e;
      e.rows_device = rows;
      token_scatter(p, e, s);
    }
    {
      TokenExitMarkParams p;
      p.rows = A0, p.layer = i + 1, p.halt = w.halt, p.rect_of_row = w.rect_of_row[cur], p.rect_exit = w.rect_exit;
      TokenExitMarkDeviceExtras e;
      e.rows_device = rows;
      token_exit_mark(p, e, s);
    }
    const int nxt = 1 - cur;
    float* x_next = x == w.x[0] ? w.x[1] : w.x[0];
    {
      TokenCompactParams p;
      p.batch = B, p.C = C, p.offsets = w.offsets[cur], p.halt = w.halt, p.x = x, p.out = x_next;
      p.new_offsets = w.offsets[nxt], p.src_row = w.src_row;
      TokenCompactDeviceExtras e;
      e.rows_bound = A0;
      token_compact(p, e, s);
    }
    {
      TokenGatherParams p;
      p.rows = A0, p.src_row = w.src_row, p.in = w.rect_of_row[cur], p.out = w.rect_of_row[nxt];
      TokenGatherDeviceExtras e;
      e.rows_device = w.offsets[nxt] + B;
      token_gather(p, e, s);
    }
    cur = nxt, x = x_next;
    group_done("blocks " + std::to_string(group_start) + "-" + std::to_string(i));
    group_start = i + 1;
  }
  snapshot_offsets(c.depth);
  layernorm_run(x, final_norm_, w.tokens, w.h);
  group_done(group_start == 0 ? "encoder" : "blocks " + std::to_string(group_start) + "-" + std::to_string(c.depth - 1));
  // Head on the live rows, filing under each rect, unsharing to the patch grids.
  if (K > 0) {
    NvtxRange range_head("head");
    const int32_t* rows = w.offsets[cur] + B;
    gemm_run(head_, w.h, A0, rows, w.logits, nullptr, Epilogue::kNone, nullptr);
    TokenScatterParams sc;
    sc.rows = A0, sc.K = K, sc.src = w.logits, sc.index = w.rect_of_row[cur], sc.table = w.rect_logits;
    TokenScatterDeviceExtras se;
    se.rows_device = rows;
    token_scatter(sc, se, s);
    UnshareParams u;
    u.K = K, u.tokens = Tp, u.rects = w.rects, u.logits = w.rect_logits;
    u.grid_offset = w.grid_offset, u.grid_w = w.grid_w, u.grid = w.grid_logits;
    u.mode = unshare_mode, u.grid_h = w.grid_h, u.flat = w.grid_flat;
    UnshareDeviceExtras ue;
    ue.tokens_device = w.rect_count;
    unshare(u, ue, s);
  }
  // The final offsets, for the host: in offsets[0] whatever buffer holds them.
  if (cur != 0)
    STEP_CUDA_CHECK(cudaMemcpyAsync(w.offsets[0], w.offsets[cur], size_t(B + 1) * 4, cudaMemcpyDeviceToDevice, s));
}

void CudaVitModel::fill_stats(const CallShape& sh, const std::vector<int32_t>& block_offsets,
                              const std::vector<int>& exit_layers, int64_t rects, EncoderOutput& out) const {
  const VitConfig& c = model_.config();
  const int B = sh.B, C = c.embed_dim, P = c.patch, K = c.num_classes;
  ForwardStats& st = out.stats;  // GFLOPs as cost.h counts them, as VitModel::forward does
  st.dense_tokens = sh.cells + int64_t(B) * c.prefix();
  st.input_tokens = block_offsets[B];
  st.dense_gflops = dense_gflops(c, sh.grids);
  st.gflops += gemm_gflops(rects, C, 3 * P * P);
  for (int i = 0; i <= c.depth; ++i) {
    const int32_t* o = block_offsets.data() + size_t(i) * (B + 1);
    const int64_t a = o[B];
    if (i == c.depth) {
      out.offsets.assign(o, o + B + 1);
      if (K > 0) st.gflops += gemm_gflops(a, K, C);
      break;
    }
    st.per_block.push_back(a);
    int64_t sum_t2 = 0;
    for (int b = 0; b < B; ++b) sum_t2 += int64_t(o[b + 1] - o[b]) * (o[b + 1] - o[b]);
    st.gflops += block_gflops(c, a, sum_t2);
    if (std::find(exit_layers.begin(), exit_layers.end(), i + 1) != exit_layers.end()) {
      st.gflops += gemm_gflops(a, K, C);
      int64_t halted = 0;
      for (int64_t t = 0; t < rects; ++t) halted += out.rect_exit[size_t(t)] == i + 1;
      st.halted.push_back(halted);
    }
  }
}

EncoderOutput CudaVitModel::forward(const EncoderInput& in) {
  using clock = std::chrono::steady_clock;
  const VitConfig& c = model_.config();
  const int B = in.images, C = c.embed_dim, pre = c.prefix(), K = c.num_classes;
  auto t0 = clock::now();
  NvtxRange range_forward("forward");
  cudaStream_t s = stream_;
  EncoderOutput out;

  std::vector<int32_t> grid_w;
  CallShape sh = shape_of(B, in.height, in.width, in.grids, &out.grid_offset, &grid_w);
  // Rects from the host (dense when none given); exact bounds.
  std::vector<TokenRect> rects = in.rects;
  if (rects.empty())
    for (int b = 0; b < B; ++b)
      for (int r = 0; r < in.grids[b].first; ++r)
        for (int col = 0; col < in.grids[b].second; ++col) rects.push_back({b, r, col, 1});
  std::vector<int32_t> offsets(B + 1, 0);
  int max_t = 0;
  {
    size_t j = 0;
    for (int b = 0; b < B; ++b) {
      int n = 0;
      while (j < rects.size() && rects[j].image == b) ++j, ++n;
      offsets[b + 1] = offsets[b] + pre + n;
      max_t = std::max(max_t, pre + n);
    }
  }
  const int32_t Tp = int32_t(rects.size());
  sh.tp_bound = Tp, sh.a_bound = offsets[B], sh.max_t = max_t;
  std::vector<int> exit_layers = in.prune.enabled ? in.prune.layers : std::vector<int>{};
  if (!exit_layers.empty() && max_t > token_halt_max_rows())
    throw Error(ErrorCode::kBadInput, "early exits on the GPU handle at most " + std::to_string(token_halt_max_rows()) +
                                          " tokens per image and this image has " + std::to_string(max_t) +
                                          ": use a smaller input size, merging, prune: false or device 'cpu'");
  Buffers w = workspace_for(sh);

  STEP_CUDA_CHECK(cudaEventRecord(start_, s));
  STEP_CUDA_CHECK(cudaMemcpyAsync(w.pixels, in.pixels, size_t(B) * 3 * in.height * in.width * 4, cudaMemcpyHostToDevice, s));
  STEP_CUDA_CHECK(cudaMemcpyAsync(w.rects, rects.data(), size_t(Tp) * sizeof(TokenRect), cudaMemcpyHostToDevice, s));
  STEP_CUDA_CHECK(cudaMemcpyAsync(w.rect_count, &Tp, 4, cudaMemcpyHostToDevice, s));
  STEP_CUDA_CHECK(cudaMemcpyAsync(w.offsets[0], offsets.data(), size_t(B + 1) * 4, cudaMemcpyHostToDevice, s));
  STEP_CUDA_CHECK(cudaMemcpyAsync(w.grid_offset, out.grid_offset.data(), size_t(B) * 4, cudaMemcpyHostToDevice, s));
  STEP_CUDA_CHECK(cudaMemcpyAsync(w.grid_w, grid_w.data(), size_t(B) * 4, cudaMemcpyHostToDevice, s));
  std::vector<int32_t> grid_h(B);
  for (int b = 0; b < B; ++b) grid_h[b] = in.grids[b].first;
  STEP_CUDA_CHECK(cudaMemcpyAsync(w.grid_h, grid_h.data(), size_t(B) * 4, cudaMemcpyHostToDevice, s));
  copy_pos(w, in.grids, out.grid_offset);
  std::vector<cudaEvent_t> events;
  std::vector<std::string> names;
  encode(sh, w, exit_layers, in.prune, in.unshare, false, &events, &names);
  STEP_CUDA_CHECK(cudaEventRecord(stop_, s));

  std::vector<int32_t> block_offsets(size_t(c.depth + 1) * (B + 1));
  STEP_CUDA_CHECK(cudaMemcpyAsync(block_offsets.data(), w.block_offsets, block_offsets.size() * 4, cudaMemcpyDeviceToHost, s));
  out.rect_exit.resize(Tp);
  STEP_CUDA_CHECK(cudaMemcpyAsync(out.rect_exit.data(), w.rect_exit, size_t(Tp) * 4, cudaMemcpyDeviceToHost, s));
  if (K > 0) {
    out.grid_logits.reset({sh.cells, K});
    STEP_CUDA_CHECK(cudaMemcpyAsync(out.grid_logits.data(), w.grid_logits, size_t(sh.cells) * K * 4, cudaMemcpyDeviceToHost, s));
  }
  Tensor tokens;
  if (in.want_tokens || in.capture) {
    tokens.reset({sh.a_bound, C});
    STEP_CUDA_CHECK(cudaMemcpyAsync(tokens.data(), w.tokens, size_t(sh.a_bound) * C * 4, cudaMemcpyDeviceToHost, s));
  }
  float last = 0, total_ms = 0;
  finish(events, names, "the GPU forward", out.stats, &last, &total_ms);
  fill_stats(sh, block_offsets, exit_layers, Tp, out);
  const int A = out.offsets[B];
  if (in.want_tokens || in.capture) {
    out.tokens.reset({A, C});
    std::memcpy(out.tokens.data(), tokens.data(), size_t(A) * C * 4);
    if (in.capture) {
      Tensor copy({A, C});
      std::memcpy(copy.data(), out.tokens.data(), size_t(A) * C * 4);
      out.captured.emplace_back("final_norm", std::move(copy));
    }
  }
  const double host_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
  out.stats.ms.emplace_back("head (gpu)", std::max(0.f, total_ms - last));
  out.stats.ms.emplace_back("host + transfers", std::max(0.0, host_ms - total_ms));
  return out;
}

}  // namespace step::cuda::device_model_detail
