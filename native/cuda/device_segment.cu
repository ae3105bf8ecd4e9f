// device_segment.cu: segment() on the GPU (see device_model.h): the uint8 images go up; normalising,
// window scoring (the similarity scorer, or the learned policy of device_policy.cu) and superpatch
// selection, packing the selected rects, the encoder (device_encoder.cu), unsharing and the bilinear
// upsampling with argmax run on the device; labels (and probabilities, logits when asked) come down.
// The work of a call depends only on its sizes and settings, so it is captured once into a CUDA graph
// per such key and replayed after (launch).
#include <algorithm>
#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "../core/cost.h"
#include "device_model_impl.cuh"

namespace step::cuda::device_model_detail {
// Runs `body` (kernels only, on stream_) as a CUDA graph cached under `key`, or directly.
template <typename Body>
bool CudaVitModel::launch(const std::string& key, Body body) {
  if (!use_graphs_) {
    body(false);
    return false;
  }
  auto it = graphs_.find(key);
  if (it == graphs_.end()) {
    if (graphs_.size() >= 16) drop_graphs();
    cudaGraph_t graph = nullptr;
    STEP_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    try {
      body(true);
    } catch (...) {
      cudaStreamEndCapture(stream_, &graph);
      if (graph) cudaGraphDestroy(graph);
      cudaGetLastError();
      throw;
    }
    STEP_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    if (err != cudaSuccess) {  // graphs unusable here: run directly from now on
      cudaGetLastError();
      use_graphs_ = false;
      body(false);
      return false;
    }
    it = graphs_.emplace(key, exec).first;
  }
  STEP_CUDA_CHECK(cudaGraphLaunch(it->second, stream_));
  return true;
}

DeviceModel::SegmentResult CudaVitModel::segment(const SegmentRequest& r) {
  using clock = std::chrono::steady_clock;
  const VitConfig& c = model_.config();
  const int B = int(r.images.size()), P = c.patch, K = c.num_classes;
  STEP_CHECK(K > 0, "segment needs a segmentation head");
  auto t0 = clock::now();
  NvtxRange range_segment("segment");
  cudaStream_t s = stream_;
  SegmentResult res;
  EncoderOutput& out = res.enc;

  // Shape: each image's grid over the batch's padded size, dense bounds, uploads' sizes.
  std::vector<std::pair<int, int>> grids;
  int H = 0, W = 0;
  for (const Image& im : r.images) {
    grids.push_back({(im.h + P - 1) / P, (im.w + P - 1) / P});
    H = std::max(H, grids.back().first * P), W = std::max(W, grids.back().second * P);
  }
  std::vector<int32_t> grid_w;
  CallShape sh = shape_of(B, H, W, grids, &out.grid_offset, &grid_w);
  const bool learned = r.merge.policy == MergePolicy::kLearned;
  if (learned && !policy_)
    throw Error(ErrorCode::kBadModel, "the learned merge policy needs policy weights (policy.trunk.*, policy.heads.*), "
                                      "which this model does not have: use policy 'similarity'");
  const int num_levels = r.merge.policy != MergePolicy::kNone ? int(r.merge.levels.size()) : 0;
  double policy_gflops = 0;
  if (learned) {
    for (const auto& [gh, gw] : grids) {
      const int pool = policy_->pool, features = policy_->feature + 1, C = EffNetTrunk::kFeatureChannels[policy_->feature];
      const TrunkSizes t = trunk_sizes(gh * P, gw * P, pool, features);
      sh.trunk.map = std::max(sh.trunk.map, t.map), sh.trunk.expanded = std::max(sh.trunk.expanded, t.expanded);
      sh.trunk.mid = std::max(sh.trunk.mid, t.mid), sh.trunk.bf16 = std::max(sh.trunk.bf16, t.bf16);
      policy_gflops += effnet_gflops(gh * P / pool, gw * P / pool, features);
      for (int32_t S : r.merge.levels) {
        sh.pooled = std::max<int64_t>(sh.pooled, int64_t(gh / S) * (gw / S) * C);
        policy_gflops += gemm_gflops(int64_t(gh / S) * (gw / S), 1, C);  // the level's head
      }
    }
  }
  STEP_CHECK(num_levels <= 8, "at most 8 merge levels");
  std::vector<int64_t> rgb_at(B), out_at(B + 1, 0);
  for (int b = 0; b < B; ++b) {
    const Image& im = r.images[b];
    rgb_at[b] = sh.rgb_bytes;
    sh.rgb_bytes += (int64_t(im.h) * im.w * im.channels + 15) / 16 * 16;
    out_at[b + 1] = out_at[b] + int64_t(im.out_h) * im.out_w;
    sh.images.push_back({im.h, im.w, im.channels, im.out_h, im.out_w});
  }
  sh.out_pixels = out_at[B], sh.probs = r.want_probs;
  std::vector<int> exit_layers = r.prune.enabled ? r.prune.layers : std::vector<int>{};
  if (!exit_layers.empty() && sh.max_t > token_halt_max_rows())
    throw Error(ErrorCode::kBadInput, "early exits on the GPU handle at most " + std::to_string(token_halt_max_rows()) +
                                          " tokens per image and this image has up to " + std::to_string(sh.max_t) +
                                          ": use a smaller input size, prune: false or device 'cpu'");
  // Settings baked into the kernels' arguments belong in the graph key too.
  std::string key = sh.key() + "|L" + std::to_string(num_levels) + (learned ? "learned" : "");
  for (int l = 0; l < num_levels; ++l) key += "," + std::to_string(r.merge.levels[l]);
  if (num_levels) key += "|tau" + std::to_string(r.merge.color_tau) + "," + std::to_string(r.merge.texture_tau);
  if (num_levels && r.merge.unshare == UnshareMode::kBlend) key += "|blend";
  for (int e : exit_layers) key += "|x" + std::to_string(e);
  if (!exit_layers.empty()) key += "|t" + std::to_string(r.prune.threshold) + ",k" + std::to_string(r.prune.top_k) + ",a" + std::to_string(r.prune.agree);
  for (int q = 0; q < 3; ++q) key += "|n" + std::to_string(r.mean[q]) + "," + std::to_string(r.std[q]);

  Buffers w = workspace_for(sh);
  // Uploads (outside the graph): images, grids, merge settings, position embeddings.
  STEP_CUDA_CHECK(cudaEventRecord(start_, s));
  for (int b = 0; b < B; ++b) {
    const Image& im = r.images[b];
    STEP_CUDA_CHECK(cudaMemcpyAsync(w.rgb + rgb_at[b], im.rgb, size_t(im.h) * im.w * im.channels, cudaMemcpyHostToDevice, s));
  }
  STEP_CUDA_CHECK(cudaMemcpyAsync(w.grid_offset, out.grid_offset.data(), size_t(B) * 4, cudaMemcpyHostToDevice, s));
  STEP_CUDA_CHECK(cudaMemcpyAsync(w.grid_w, grid_w.data(), size_t(B) * 4, cudaMemcpyHostToDevice, s));
  if (num_levels) {
    STEP_CUDA_CHECK(cudaMemcpyAsync(w.levels, r.merge.levels.data(), size_t(num_levels) * 4, cudaMemcpyHostToDevice, s));
    STEP_CUDA_CHECK(cudaMemcpyAsync(w.thresholds, r.merge.thresholds.data(), size_t(num_levels) * 4, cudaMemcpyHostToDevice, s));
  }
  std::vector<int32_t> grid_h(B);
  for (int b = 0; b < B; ++b) grid_h[b] = grids[b].first;
  STEP_CUDA_CHECK(cudaMemcpyAsync(w.grid_h, grid_h.data(), size_t(B) * 4, cudaMemcpyHostToDevice, s));
  copy_pos(w, grids, out.grid_offset);

  std::vector<cudaEvent_t> events;
  std::vector<std::string> names;
  auto body = [&](bool graph) {
    // Normalise each image into its plane of the padded batch, score and select on the device.
    for (int b = 0; b < B; ++b) {
      const Image& im = r.images[b];
      ImageNormalizeParams n;
      n.src = w.rgb + rgb_at[b], n.h = im.h, n.w = im.w, n.channels = im.channels;
      for (int q = 0; q < 3; ++q) n.mean[q] = r.mean[q], n.std[q] = r.std[q];
      n.out_h = H, n.out_w = W, n.out = w.pixels + int64_t(b) * 3 * H * W;
      image_normalize(n, s);
      const int64_t at = out.grid_offset[b];
      if (learned) {
        policy_scores(w, w.rgb + rgb_at[b], im.h, im.w, im.channels, grids[b].first, grids[b].second, r.merge.levels,
                      w.scores + at);
      } else if (num_levels) {
        WindowScoreParams ws;
        ws.image = w.rgb + rgb_at[b], ws.h = im.h, ws.w = im.w, ws.channels = im.channels, ws.patch = P;
        ws.gh = grids[b].first, ws.gw = grids[b].second, ws.num_levels = num_levels, ws.levels = w.levels;
        ws.color_tau = r.merge.color_tau, ws.texture_tau = r.merge.texture_tau, ws.scores = w.scores + at;
        WindowScoreDeviceExtras wx;
        wx.workspace = w.score_ws + 4 * at;
        window_score(ws, wx, s);
      }
      SuperpatchSelectParams sp;
      sp.image = b, sp.gh = grids[b].first, sp.gw = grids[b].second, sp.num_levels = num_levels;
      sp.levels = w.levels, sp.thresholds = w.thresholds, sp.scores = w.scores + at;
      sp.rects = w.stage + at, sp.count = w.counts + b, sp.token_of_patch = w.token_of_patch + at;
      superpatch_select(sp, s);
    }
    {
      TokenPackParams p;
      p.batch = B, p.prefix = c.prefix(), p.counts = w.counts, p.grid_offset = w.grid_offset, p.stage = w.stage;
      p.rects = w.rects, p.offsets = w.offsets[0], p.rect_count = w.rect_count;
      token_pack(p, s);
    }
    encode(sh, w, exit_layers, r.prune, num_levels ? r.merge.unshare : UnshareMode::kCopy, graph, &events, &names);
    for (int b = 0; b < B; ++b) {
      const Image& im = r.images[b];
      UpsampleParams u;
      u.K = K, u.gh = grids[b].first, u.gw = grids[b].second, u.patch = P;
      u.logits = w.grid_logits + int64_t(out.grid_offset[b]) * K;
      u.valid_h = im.h, u.valid_w = im.w, u.out_h = im.out_h, u.out_w = im.out_w;
      u.labels = w.labels + out_at[b], u.probs = r.want_probs ? w.probs + int64_t(K) * out_at[b] : nullptr;
      upsample(u, s);
    }
  };
  res.graph = launch(key, body);
  STEP_CUDA_CHECK(cudaEventRecord(stop_, s));

  // Downloads: bookkeeping (small), labels, and what was asked for.
  std::vector<int32_t> block_offsets(size_t(c.depth + 1) * (B + 1)), counts(B);
  STEP_CUDA_CHECK(cudaMemcpyAsync(block_offsets.data(), w.block_offsets, block_offsets.size() * 4, cudaMemcpyDeviceToHost, s));
  std::vector<int32_t> rect_exit(sh.tp_bound);
  STEP_CUDA_CHECK(cudaMemcpyAsync(rect_exit.data(), w.rect_exit, rect_exit.size() * 4, cudaMemcpyDeviceToHost, s));
  std::vector<TokenRect> rects;
  std::vector<int32_t> token_of_patch;
  STEP_CUDA_CHECK(cudaMemcpyAsync(counts.data(), w.counts, size_t(B) * 4, cudaMemcpyDeviceToHost, s));
  rects.resize(size_t(sh.tp_bound));
  STEP_CUDA_CHECK(cudaMemcpyAsync(rects.data(), w.rects, rects.size() * sizeof(TokenRect), cudaMemcpyDeviceToHost, s));
  token_of_patch.resize(size_t(sh.cells));
  STEP_CUDA_CHECK(cudaMemcpyAsync(token_of_patch.data(), w.token_of_patch, token_of_patch.size() * 4, cudaMemcpyDeviceToHost, s));
  res.labels.resize(B);
  for (int b = 0; b < B; ++b) {
    res.labels[b].resize(size_t(out_at[b + 1] - out_at[b]));
    STEP_CUDA_CHECK(cudaMemcpyAsync(res.labels[b].data(), w.labels + out_at[b], res.labels[b].size() * 4, cudaMemcpyDeviceToHost, s));
  }
  if (r.want_probs) {
    res.probs.resize(B);
    for (int b = 0; b < B; ++b) {
      res.probs[b].resize(size_t(K) * (out_at[b + 1] - out_at[b]));
      STEP_CUDA_CHECK(cudaMemcpyAsync(res.probs[b].data(), w.probs + int64_t(K) * out_at[b], res.probs[b].size() * 4,
                                      cudaMemcpyDeviceToHost, s));
    }
  }
  if (r.want_logits) {
    out.grid_logits.reset({sh.cells, K});
    STEP_CUDA_CHECK(cudaMemcpyAsync(out.grid_logits.data(), w.grid_logits, size_t(sh.cells) * K * 4, cudaMemcpyDeviceToHost, s));
  }
  float last = 0, total_ms = 0;
  finish(events, names, "the GPU segment", out.stats, &last, &total_ms);

  // The plan as the host's MergePlan: rects in image order, token_of_patch per image, tokens per size.
  int64_t n = 0;
  for (int b = 0; b < B; ++b) n += counts[b];
  rects.resize(size_t(n));
  res.plan.rects = std::move(rects);
  int64_t first = 0;
  for (int b = 0; b < B; ++b) {
    const int64_t at = out.grid_offset[b], cells = int64_t(grids[b].first) * grids[b].second;
    res.plan.token_of_patch.emplace_back(token_of_patch.begin() + at, token_of_patch.begin() + at + cells);
    res.plan.tokens_per_size.push_back(
        tokens_per_level(res.plan.rects.data() + first, counts[b], r.merge.levels.data(), num_levels));
    first += counts[b];
  }
  const int64_t Tp = int64_t(res.plan.rects.size());
  rect_exit.resize(size_t(Tp));
  out.rect_exit = std::move(rect_exit);
  fill_stats(sh, block_offsets, exit_layers, Tp, out);
  out.stats.gflops += policy_gflops;
  res.plan.gflops = policy_gflops;
  const double host_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
  if (res.graph) out.stats.ms.emplace_back("graph (gpu)", total_ms);
  else out.stats.ms.emplace_back("head + upsample (gpu)", std::max(0.f, total_ms - last));
  out.stats.ms.emplace_back("host + transfers", std::max(0.0, host_ms - total_ms));
  return res;
}

}  // namespace step::cuda::device_model_detail
