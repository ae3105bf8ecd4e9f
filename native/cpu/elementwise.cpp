// elementwise.cpp: per-pixel ops. image_normalize turns interleaved uint8 RGB(A) into planar
// normalised float32 ((v - mean) / std per channel), zero-padded to the padded size; planar (for the
// ViT's patch embedding) or channels-last (for the policy CNN).
#include "cpu_backend.h"
#include "parallel.h"

namespace step::cpu {

void image_normalize(const ImageNormalizeParams& p) {
  const int64_t plane = int64_t(p.out_h) * p.out_w;
  float scale[3], shift[3];
  for (int c = 0; c < 3; ++c) {
    scale[c] = 1.f / p.std[c];
    shift[c] = -p.mean[c] / p.std[c];
  }
  if (p.channels_last) {
    parallel_for(p.out_h, 16, [&](int64_t begin, int64_t end) {
      for (int64_t y = begin; y < end; ++y) {
        float* out = p.out + y * p.out_w * 3;  // (out_w, 3)
        for (int x = 0; x < p.out_w; ++x)
          for (int c = 0; c < 3; ++c)
            out[x * 3 + c] = y < p.h && x < p.w ? float(p.src[(y * p.w + x) * p.channels + c]) * scale[c] + shift[c] : 0.f;
      }
    });
    return;
  }
  parallel_for(p.out_h, 16, [&](int64_t begin, int64_t end) {
    for (int64_t y = begin; y < end; ++y) {
      for (int c = 0; c < 3; ++c) {
        float* out = p.out + c * plane + y * p.out_w;  // (out_w)
        int x = 0;
        if (y < p.h) {
          const uint8_t* src = p.src + y * p.w * p.channels + c;
          for (; x < p.w; ++x) out[x] = float(src[int64_t(x) * p.channels]) * scale[c] + shift[c];
        }
        for (; x < p.out_w; ++x) out[x] = 0.f;
      }
    }
  });
}

}  // namespace step::cpu
