// cost.cpp: see cost.h.
#include "cost.h"

#include "effnet.h"

namespace step {

double block_gflops(const VitConfig& c, int64_t rows, int64_t sum_t2) {
  const int C = c.embed_dim;
  return gemm_gflops(rows, 3 * C, C) + attention_gflops(sum_t2, C) + gemm_gflops(rows, C, C) +
         gemm_gflops(rows, c.mlp_hidden, C) + gemm_gflops(rows, C, c.mlp_hidden);
}

double dense_gflops(const VitConfig& c, const std::vector<std::pair<int, int>>& grids) {
  double total = 0;
  for (const auto& [gh, gw] : grids) {
    const int64_t patches = int64_t(gh) * gw, T = patches + c.prefix();
    total += gemm_gflops(patches, c.embed_dim, 3 * c.patch * c.patch);
    total += c.depth * block_gflops(c, T, T * T);
    if (c.num_classes > 0) total += gemm_gflops(T, c.num_classes, c.embed_dim);
  }
  return total;
}

double effnet_gflops(int H, int W, int features) {
  using T = EffNetTrunk;
  int ih = T::conv_out(H, 3, 2), iw = T::conv_out(W, 3, 2);
  double total = 2e-9 * double(ih) * iw * T::kStemChannels * 3 * 9;  // the 3 x 3 stem over RGB
  for (int i = 0; i < T::num_blocks(features); ++i) {
    const T::Block& b = T::blocks()[size_t(i)];
    const int oh = T::conv_out(ih, b.kernel, b.stride), ow = T::conv_out(iw, b.kernel, b.stride);
    const int64_t in_px = int64_t(ih) * iw, out_px = int64_t(oh) * ow;
    const int dw_c = b.separable ? b.in : b.mid;
    if (!b.separable) total += gemm_gflops(in_px, b.mid, b.in);    // expansion (conv_pw)
    total += 2e-9 * double(out_px) * dw_c * b.kernel * b.kernel;  // depthwise
    total += gemm_gflops(out_px, b.out, dw_c);                    // projection
    ih = oh, iw = ow;
  }
  return total;
}

double forward_bytes(const VitConfig& c, const ForwardShape& s, int threads) {
  const double C = c.embed_dim, Hd = c.mlp_hidden, K = c.num_classes, P = c.patch, pre = c.prefix();
  const double cells = double(s.cells), A = cells + double(s.images) * pre;  // tokens, at most (no merging)
  const double floats = 3 * double(s.padded_pixels) + cells * (C + 2 * K + 1) + cells * (3 * P * P + C + K) +
                        A * (8 * C + Hd + 2 * K) + 2 * A * C +
                        // per thread: attention's score rows S^T (T x 128), and for bf16 their copy as pairs (T / 2 x 128)
                        threads * (double(s.largest_tokens) + pre) * 192 +
                        (s.learned_policy ? 80 * double(s.largest_pixels) : 0);
  return 4 * floats + 32 * cells + double(16 << 20);
}

double result_bytes(const VitConfig& c, int64_t out_pixels, int64_t cells, bool probs, bool logits) {
  const double K = c.num_classes, px = double(out_pixels), n = double(cells);
  return (K <= 256 ? 1 : 2) * px + (probs ? 4 * K * px : 0) + (logits ? 4 * K * n : 0) + 6 * n + 4 * K * n;
}

double trunk_forward_bytes(int64_t pixels) { return 4 * double(pixels) * 83; }

}  // namespace step
