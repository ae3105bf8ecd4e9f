// features.cpp: one forwardFeatures() call (features.h).
#include "features.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>

namespace step {
namespace {

// Runs f; a NonFiniteError becomes an error that names the pixels or the model, by the pixels' peak.
template <typename F>
FeaturesResult checked(const FeaturesRequest& r, F f) {
  try {
    return f();
  } catch (const NonFiniteError& e) {
    // the inputs are finite (lib/ checks): either they are far outside the normalised range or the
    // weights are too large for float32
    float peak = 0.f;
    for (size_t i = 0, n = size_t(r.images) * 3 * r.height * r.width; i < n; ++i) peak = std::max(peak, std::fabs(r.pixels[i]));
    if (peak > 1e4f)
      throw Error(ErrorCode::kBadInput, std::string(e.what()) + ": pixels.data holds values as large as " + std::to_string(peak) +
                                            " (normalised pixels lie within about +-10)");
    throw Error(ErrorCode::kBadModel, std::string(e.what()) + " for pixels within +-" + std::to_string(peak) +
                                          ": the model's weights are too large for float32 (a huge weight, bias or scale)");
  }
}

}  // namespace

FeaturesResult forward_features(VitModel& model, Backend& cpu, DeviceSegmenter* gpu, const FeaturesRequest& r) {
  return checked(r, [&] {
    const int P = model.config().patch;
    EncoderInput in;
    in.images = r.images, in.height = r.height, in.width = r.width, in.pixels = r.pixels, in.capture = r.capture;
    in.grids.assign(r.images, {r.height / P, r.width / P});
    in.unshare = UnshareMode::kCopy;  // dense: one rect per patch
    FeaturesResult out;
    out.enc = gpu ? gpu->forward(in) : model.forward(cpu, in);
    return out;
  });
}

// NCHW in, NHWC inside, the five stage maps back as NCHW (timm's layout).
FeaturesResult forward_features(const EffNetTrunk& trunk, Backend& cpu, const FeaturesRequest& r) {
  return checked(r, [&] {
    using clock = std::chrono::steady_clock;
    auto t0 = clock::now();
    const int n = r.images;
    const int64_t plane = int64_t(r.height) * r.width;
    Tensor x({n, r.height, r.width, 3});
    for (int b = 0; b < n; ++b)
      for (int64_t i = 0; i < plane; ++i)
        for (int c = 0; c < 3; ++c) x.data()[(b * plane + i) * 3 + c] = r.pixels[(int64_t(b) * 3 + c) * plane + i];
    FeaturesResult out;
    std::vector<Tensor> maps = trunk.forward(cpu, x.data(), n, r.height, r.width, &out.enc.stats.gflops);
    for (Tensor& m : maps) {
      const int64_t hh = m.dim(1), ww = m.dim(2), C = m.dim(3);
      Tensor nchw({n, C, hh, ww});
      for (int b = 0; b < n; ++b)
        for (int64_t i = 0; i < hh * ww; ++i)
          for (int64_t c = 0; c < C; ++c) nchw.data()[(b * C + c) * hh * ww + i] = m.data()[(b * hh * ww + i) * C + c];
      if (!all_finite(nchw.data(), nchw.numel())) throw NonFiniteError("stage maps of the EfficientNet trunk");
      out.stages.push_back(std::move(nchw));
    }
    out.enc.stats.ms.emplace_back("trunk", std::chrono::duration<double, std::milli>(clock::now() - t0).count());
    return out;
  });
}

}  // namespace step
