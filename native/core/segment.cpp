// segment.cpp: one segment() call (segment.h).
#include "segment.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <utility>

namespace step {
namespace {

using clock = std::chrono::steady_clock;
double ms_since(clock::time_point t0) { return std::chrono::duration<double, std::milli>(clock::now() - t0).count(); }

// One image, or one tile of one: interleaved uint8 rows of w pixels.
struct View {
  const uint8_t* rgb;
  int w, h, channels;
};

// One forward over a batch of views: normalising, merging, the encoder (on the model's device).
struct Pass {
  EncoderOutput out;
  MergePlan plan;
  std::vector<std::pair<int, int>> grids;
  std::vector<int32_t> rect_start;  // (B + 1) first rect of each view in plan.rects
};

// Per image, while the call runs: its result and its patch-grid logits.
struct Work {
  int gh = 0, gw = 0;
  Tensor grid;  // (gh * gw, K) patch-grid logits (blended over tiles)
};

void index_rects(Pass& pass) {
  const int B = int(pass.grids.size());
  pass.rect_start.assign(B + 1, 0);
  for (const TokenRect& r : pass.plan.rects) ++pass.rect_start[r.image + 1];
  for (int b = 0; b < B; ++b) pass.rect_start[b + 1] += pass.rect_start[b];
}

class Segmenter {
 public:
  Segmenter(VitModel& model, Backend& cpu, DeviceSegmenter* gpu, const SegmentRequest& r)
      : model_(model), cpu_(cpu), gpu_(gpu), r_(r), P_(model.config().patch), K_(model.config().num_classes) {}

  SegmentResult run() {
    const int B = int(r_.images.size());
    res_.images.resize(B);
    work_.resize(B);
    for (int b = 0; b < B; ++b) {
      work_[b].gh = (r_.images[b].h + P_ - 1) / P_, work_[b].gw = (r_.images[b].w + P_ - 1) / P_;
      work_[b].grid.reset({int64_t(work_[b].gh) * work_[b].gw, K_});
    }
    if (gpu_ && r_.tile.size == 0) {
      run_gpu();
      return std::move(res_);
    }
    if (r_.tile.size == 0) {
      std::vector<View> views;
      for (const SegmentImage& im : r_.images) views.push_back({im.rgb, im.w, im.h, im.channels});
      Pass pass = run_pass(views);
      add_stats(pass.out.stats);
      for (int b = 0; b < B; ++b) {
        file(pass, b, b, 0, 0, 0, nullptr, nullptr);
        copy_grid(pass, b, b);
      }
    } else {
      for (int b = 0; b < B; ++b) run_tiles(b);
    }
    auto t0 = clock::now();
    for (int b = 0; b < B; ++b) upsample(b);
    res_.stats.ms.emplace_back("upsample", ms_since(t0));
    return std::move(res_);
  }

 private:
  EncoderOutput forward(const EncoderInput& in) { return gpu_ ? gpu_->forward(in) : model_.forward(cpu_, in); }

  Pass run_pass(const std::vector<View>& views) {
    const int B = int(views.size());
    auto t0 = clock::now();
    Pass pass;
    EncoderInput in;
    in.images = B;
    for (const View& v : views) {
      const int gh = (v.h + P_ - 1) / P_, gw = (v.w + P_ - 1) / P_;
      in.grids.push_back({gh, gw});
      in.height = std::max(in.height, gh * P_), in.width = std::max(in.width, gw * P_);
    }
    pass.grids = in.grids;
    Tensor pixels({B, 3, in.height, in.width});  // (B, 3, H, W)
    for (int b = 0; b < B; ++b) {
      ImageNormalizeParams p;
      p.src = views[b].rgb, p.h = views[b].h, p.w = views[b].w, p.channels = views[b].channels;
      for (int c = 0; c < 3; ++c) p.mean[c] = 255.f * r_.mean[c], p.std[c] = 255.f * r_.std[c];
      p.out_h = in.height, p.out_w = in.width, p.out = pixels.data() + int64_t(b) * 3 * in.height * in.width;
      cpu_.image_normalize(p);
    }
    in.pixels = pixels.data();
    const double normalize_ms = ms_since(t0);
    std::vector<MergeImage> merge_images;
    for (int b = 0; b < B; ++b)
      merge_images.push_back({views[b].rgb, views[b].h, views[b].w, views[b].channels, in.grids[b].first, in.grids[b].second});
    pass.plan = plan_merge(cpu_, merge_images, P_, r_.merge, model_.policy());
    in.rects = pass.plan.rects;
    in.prune = r_.prune;
    in.unshare = r_.merge.unshare;
    in.want_tokens = false;
    pass.out = forward(in);
    if (!all_finite(pass.out.grid_logits.data(), pass.out.grid_logits.numel())) throw NonFiniteError("patch-grid logits");
    pass.out.stats.ms.insert(pass.out.stats.ms.begin(),
                             {{"normalize", normalize_ms}, {"score", pass.plan.score_ms}, {"select", pass.plan.select_ms}});
    pass.out.stats.gflops += pass.plan.gflops;
    res_.gflops_policy += pass.plan.gflops;
    index_rects(pass);
    return pass;
  }

  // Adds view b of `pass` to image i's result at patch offset (oy, ox): token map entries (token
  // indices offset by `first_token`), token counts, and (with acc) its logits into the running sums.
  void file(const Pass& pass, int b, int i, int oy, int ox, int64_t first_token, float* acc, float* weight) {
    const SegmentImage& im = r_.images[i];
    SegmentImageResult& r = res_.images[i];
    const int row = work_[i].gw, pre = model_.config().prefix();
    const auto [gh, gw] = pass.grids[b];
    const std::vector<int32_t>& map = pass.plan.token_of_patch[b];
    const int32_t first_rect = pass.rect_start[b];
    const TokenRect* rects = pass.plan.rects.data() + first_rect;
    const float* logits = acc ? pass.out.grid_logits.data() + int64_t(pass.out.grid_offset[b]) * K_ : nullptr;
    for (int y = 0; y < gh; ++y)
      for (int x = 0; x < gw; ++x) {
        const int64_t at = int64_t(oy + y) * row + (ox + x), t = map[size_t(y) * gw + x];
        im.index[at] = int32_t(first_token + t);
        im.size[at] = uint8_t(rects[t].size);
        im.exit_layer[at] = uint8_t(pass.out.rect_exit[size_t(first_rect + t)]);
        if (acc) {
          const float* l = logits + (int64_t(y) * gw + x) * K_;
          float* a = acc + at * K_;
          for (int k = 0; k < K_; ++k) a[k] += l[k];
          weight[at] += 1.f;
        }
      }
    const std::vector<int64_t>& per = pass.plan.tokens_per_size[b];
    if (r.tokens_per_size.size() < per.size()) r.tokens_per_size.resize(per.size(), 0);
    for (size_t l = 0; l < per.size(); ++l) r.tokens_per_size[l] += per[l];
    r.dense += int64_t(gh) * gw + pre;
    r.input += pre + (pass.rect_start[b + 1] - pass.rect_start[b]);
    r.tiles += 1;
  }
  // Image i's patch-grid logits: view b of an untiled pass.
  void copy_grid(const Pass& pass, int b, int i) {
    Tensor& grid = work_[i].grid;
    std::memcpy(grid.data(), pass.out.grid_logits.data() + int64_t(pass.out.grid_offset[b]) * K_, grid.numel() * sizeof(float));
  }

  // Sums the statistics of a pass into the call's (stage times by name, counts per block and exit).
  void add_stats(const ForwardStats& s) {
    ForwardStats& stats = res_.stats;
    if (!have_stats_) {
      stats = s;
      have_stats_ = true;
      return;
    }
    stats.dense_tokens += s.dense_tokens, stats.input_tokens += s.input_tokens, stats.gflops += s.gflops;
    stats.dense_gflops += s.dense_gflops;
    for (size_t i = 0; i < s.per_block.size(); ++i) {
      if (i < stats.per_block.size()) stats.per_block[i] += s.per_block[i];
      else stats.per_block.push_back(s.per_block[i]);
    }
    for (size_t i = 0; i < s.halted.size(); ++i) {
      if (i < stats.halted.size()) stats.halted[i] += s.halted[i];
      else stats.halted.push_back(s.halted[i]);
    }
    for (const auto& [name, v] : s.ms) {
      auto it = std::find_if(stats.ms.begin(), stats.ms.end(), [&](const auto& e) { return e.first == name; });
      if (it != stats.ms.end()) it->second += v;
      else stats.ms.emplace_back(name, v);
    }
  }

  // Image b as overlapping tiles, one forward each, logits averaged over the overlaps.
  void run_tiles(int b) {
    const SegmentImage& im = r_.images[b];
    Work& wk = work_[b];
    Tensor& acc = wk.grid;
    acc.fill(0.f);
    std::vector<float> weight(size_t(wk.gh) * wk.gw, 0.f);
    std::vector<uint8_t> crop;
    int64_t first_token = 0;
    for (const Tile& t : tile_layout(wk.gh, wk.gw, P_, r_.tile)) {
      // the crop in pixels: the tile's grid, cut at the image's edge (the last patch may be partial)
      const int x0 = t.ox * P_, y0 = t.oy * P_;
      const int cw = std::min(t.gw * P_, im.w - x0), ch = std::min(t.gh * P_, im.h - y0);
      crop.resize(size_t(cw) * ch * im.channels);
      for (int y = 0; y < ch; ++y)
        std::memcpy(crop.data() + size_t(y) * cw * im.channels, im.rgb + (size_t(y0 + y) * im.w + x0) * im.channels, size_t(cw) * im.channels);
      Pass pass = run_pass({{crop.data(), cw, ch, im.channels}});
      add_stats(pass.out.stats);
      file(pass, 0, b, t.oy, t.ox, first_token, acc.data(), weight.data());
      first_token += pass.rect_start[1];
    }
    for (size_t i = 0; i < weight.size(); ++i) {
      float* a = acc.data() + int64_t(i) * K_;
      const float inv = 1.f / weight[i];
      for (int k = 0; k < K_; ++k) a[k] *= inv;
    }
  }

  void upsample(int b) {
    const SegmentImage& im = r_.images[b];
    const Work& wk = work_[b];
    UpsampleParams u;
    u.K = K_, u.gh = wk.gh, u.gw = wk.gw, u.patch = P_, u.logits = wk.grid.data();
    u.valid_h = im.h, u.valid_w = im.w, u.out_h = im.out_h, u.out_w = im.out_w;
    u.labels_u8 = im.labels8, u.labels_u16 = im.labels16, u.probs = r_.want_probs ? im.probs : nullptr;
    cpu_.upsample(u);
    write_logits(b);
  }
  void write_logits(int b) {  // (K, gh, gw) from the (gh, gw, K) grid
    if (!r_.want_logits) return;
    const SegmentImage& im = r_.images[b];
    const Work& wk = work_[b];
    const int64_t cells = int64_t(wk.gh) * wk.gw;
    for (int64_t i = 0; i < cells; ++i)
      for (int k = 0; k < K_; ++k) im.logits[k * cells + i] = wk.grid.data()[i * K_ + k];
  }

  // The whole call on the GPU, from the resized uint8 images to the labels; filed here.
  void run_gpu() {
    const int B = int(r_.images.size());
    DeviceSegmentRequest req;
    for (const SegmentImage& im : r_.images) req.images.push_back({im.rgb, im.h, im.w, im.channels, im.out_h, im.out_w});
    for (int c = 0; c < 3; ++c) req.mean[c] = 255.f * r_.mean[c], req.std[c] = 255.f * r_.std[c];
    req.merge = r_.merge, req.prune = r_.prune, req.want_probs = r_.want_probs, req.want_logits = r_.want_logits;
    DeviceSegmentResult dev = gpu_->segment(req);
    Pass pass;
    pass.out = std::move(dev.enc);
    pass.plan = std::move(dev.plan);
    for (const Work& wk : work_) pass.grids.push_back({wk.gh, wk.gw});
    index_rects(pass);
    add_stats(pass.out.stats);
    res_.gflops_policy += pass.plan.gflops;
    const bool logits = r_.want_logits && pass.out.grid_logits.numel() > 0;  // downloaded only when asked for
    for (int b = 0; b < B; ++b) {
      const SegmentImage& im = r_.images[b];
      file(pass, b, b, 0, 0, 0, nullptr, nullptr);
      const std::vector<int32_t>& labels = dev.labels[b];
      for (size_t i = 0; i < labels.size(); ++i) {
        if (im.labels8) im.labels8[i] = uint8_t(labels[i]);
        else im.labels16[i] = uint16_t(labels[i]);
      }
      if (r_.want_probs) std::memcpy(im.probs, dev.probs[b].data(), dev.probs[b].size() * sizeof(float));
      if (logits) {
        copy_grid(pass, b, b);
        write_logits(b);
      }
    }
  }

  VitModel& model_;
  Backend& cpu_;
  DeviceSegmenter* gpu_;
  const SegmentRequest& r_;
  const int P_, K_;
  std::vector<Work> work_;
  SegmentResult res_;
  bool have_stats_ = false;
};

}  // namespace

SegmentResult segment(VitModel& model, Backend& cpu, DeviceSegmenter* gpu, const SegmentRequest& r) {
  try {
    return Segmenter(model, cpu, gpu, r).run();
  } catch (const NonFiniteError& e) {
    // images are uint8 and mean / std finite and positive (lib/ checks): the model is at fault
    throw Error(ErrorCode::kBadModel,
                std::string(e.what()) + " for this image: the model's weights (or its pixel_std) are too large for float32");
  }
}

}  // namespace step
