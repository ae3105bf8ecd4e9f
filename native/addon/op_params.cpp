// op_params.cpp: `Call`'s reading of JS values and the checked reader of every op parameter struct
// (op_table.h lists them). A reader reads the options both backends share; what only the CUDA op takes
// (a variant name, bf16 twins, counts on the device, grid bounds) cudaOps reads on top
// (cuda_prepare.cpp), and what only the CPU takes (precision, packW) ops_binding.cpp does.
// Sizes and the indices an op follows are checked before any array is resolved (op_params.h).
#include "op_params.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "op_table.h"

namespace step::addon {

namespace {

// The one default for a setting the engine always receives: layernorm's eps when an op test leaves it
// out (timm's LayerNorm eps, as lib/config.ts's norm_eps default).
constexpr float kDefaultLayerNormEps = 1e-6f;

const char* typed_array_name(napi_typedarray_type type) {
  switch (type) {
    case napi_int8_array: return "Int8Array";
    case napi_uint8_array: return "Uint8Array";
    case napi_uint8_clamped_array: return "Uint8ClampedArray";
    case napi_int16_array: return "Int16Array";
    case napi_uint16_array: return "Uint16Array";
    case napi_int32_array: return "Int32Array";
    case napi_uint32_array: return "Uint32Array";
    case napi_float32_array: return "Float32Array";
    case napi_float64_array: return "Float64Array";
    default: return "a typed array";
  }
}

}  // namespace

std::string describe(const Napi::Value& v) {
  if (v.IsTypedArray()) {
    const Napi::TypedArray ta = v.As<Napi::TypedArray>();
    return std::string(typed_array_name(ta.TypedArrayType())) + " of length " + std::to_string(ta.ElementLength());
  }
  if (v.IsUndefined()) return "undefined";
  if (v.IsNull()) return "null";
  if (v.IsNumber()) return "number " + v.ToString().Utf8Value();
  if (v.IsString()) return "string '" + v.As<Napi::String>().Utf8Value() + "'";
  if (v.IsBoolean()) return v.As<Napi::Boolean>().Value() ? "boolean true" : "boolean false";
  if (v.IsArray()) return "an array";
  return "a value of type " + std::string(v.IsObject() ? "object" : "function");
}

// ---- Call -----------------------------------------------------------------------------------------

Call::Call(const Napi::Value& params, std::string where, bool on_device)
    : where_(std::move(where)), on_device_(on_device) {
  if (!params.IsObject() || params.IsArray())
    throw Napi::TypeError::New(params.Env(), where_ + ": expected an object of params but received " + describe(params));
  params_ = params.As<Napi::Object>();
}

bool Call::has(const char* key) const {
  const Napi::Value v = params_.Get(key);
  return !v.IsUndefined() && !v.IsNull();
}

void Call::fail_type(const std::string& expected, const char* key) const {
  throw Napi::TypeError::New(env(), where_ + ": expected " + expected + " for " + key + " but received " +
                                        describe(params_.Get(key)));
}
void Call::fail_range(const std::string& message) const { throw Napi::RangeError::New(env(), where_ + ": " + message); }

int Call::integer(const char* key, int min) const {
  const Napi::Value v = params_.Get(key);
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
  if (!(d >= min && d <= 2147483647.0 && d == std::floor(d))) fail_type("an integer >= " + std::to_string(min), key);
  return int(d);
}
float Call::number(const char* key) const {
  const Napi::Value v = params_.Get(key);
  if (!v.IsNumber()) fail_type("a number", key);
  return v.As<Napi::Number>().FloatValue();
}
bool Call::boolean_or(const char* key, bool fallback) const {
  if (!has(key)) return fallback;
  const Napi::Value v = params_.Get(key);
  if (!v.IsBoolean()) fail_type("a boolean", key);
  return v.As<Napi::Boolean>().Value();
}
std::string Call::string_or(const char* key, const char* fallback) const {
  if (!has(key)) return fallback;
  const Napi::Value v = params_.Get(key);
  if (!v.IsString()) fail_type("a string", key);
  return v.As<Napi::String>().Utf8Value();
}
std::vector<float> Call::numbers(const char* key, uint32_t n) const {
  const Napi::Value v = params_.Get(key);
  const std::string expected = "an array of " + std::to_string(n) + " numbers";
  if (!v.IsArray() || v.As<Napi::Array>().Length() != n) fail_type(expected, key);
  std::vector<float> out;
  for (uint32_t i = 0; i < n; ++i) {
    const Napi::Value e = v.As<Napi::Array>().Get(i);
    if (!e.IsNumber()) fail_type(expected, key);
    out.push_back(e.As<Napi::Number>().FloatValue());
  }
  return out;
}

// The wrong type is a TypeError, too few elements a RangeError; both name the option.
Call::View Call::view_of(const char* key, int64_t min_elems, napi_typedarray_type type, const char* kind) const {
  const Napi::Value v = params_.Get(key);
  const std::string expected = std::string(kind) + " of at least " + std::to_string(min_elems) + " elements";
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type) fail_type(expected, key);
  const Napi::TypedArray ta = v.As<Napi::TypedArray>();
  if (int64_t(ta.ElementLength()) < min_elems)
    fail_range("expected " + expected + " for " + key + " but received " + describe(v));
  uint8_t* base = static_cast<uint8_t*>(ta.ArrayBuffer().Data());
  return {base ? base + ta.ByteOffset() : nullptr, ta.ElementLength()};
}

void* Call::place(const char*, uint8_t* host, size_t, bool) { return host; }

// ---- checks shared by several readers ---------------------------------------------------------------

PackedRows check_offsets(const Call& call, int batch) {
  const int32_t* offsets = call.host<int32_t>("offsets", int64_t(batch) + 1);
  if (offsets[0] != 0) call.fail_range("offsets[0] must be 0");
  PackedRows r;
  for (int b = 0; b < batch; ++b) {
    if (offsets[b + 1] < offsets[b]) call.fail_range("offsets must not decrease");
    r.max_t = std::max(r.max_t, offsets[b + 1] - offsets[b]);
  }
  r.rows = offsets[batch];
  return r;
}

namespace {

// levels: the window sides (Int32Array), each >= 1; sets their count and returns the number of
// scores of all levels on a gh x gw grid.
int64_t check_levels(const Call& call, int* num_levels, int gh, int gw) {
  const int32_t* levels = call.host<int32_t>("levels", 0);  // required
  const int64_t n_levels = call.length<int32_t>("levels");
  if (n_levels > 65535) call.fail_range("at most 65535 levels");
  *num_levels = int(n_levels);
  int64_t n = 0;
  for (int l = 0; l < *num_levels; ++l) {
    if (levels[l] < 1) call.fail_range("levels[" + std::to_string(l) + "] must be >= 1");
    n += int64_t(gh / levels[l]) * (gw / levels[l]);
  }
  return n;
}

// Checks that `tokens` rects fit their images' grids (gridOffset, gridW and, when `rows`, gridH);
// returns the cells of the grids they reach (all of them with gridH).
int64_t check_rects(const Call& call, int64_t tokens, bool rows) {
  const int64_t images = call.length<int32_t>("gridOffset");
  const int32_t* grid_offset = call.host<int32_t>("gridOffset", 0);
  const int32_t* grid_w = call.host<int32_t>("gridW", images);
  const int32_t* grid_h = rows ? call.host<int32_t>("gridH", images) : nullptr;
  const int32_t* rects = call.host<int32_t>("rects", 4 * tokens);
  int64_t cells = 0;
  for (int64_t b = 0; grid_h && b < images; ++b) cells = std::max(cells, grid_offset[b] + int64_t(grid_h[b]) * grid_w[b]);
  for (int64_t t = 0; t < tokens; ++t) {
    const int32_t image = rects[4 * t], row = rects[4 * t + 1], col = rects[4 * t + 2], size = rects[4 * t + 3];
    if (image < 0 || image >= images || row < 0 || col < 0 || size < 1 || grid_offset[image] < 0 ||
        int64_t(col) + size > grid_w[image] || (grid_h && int64_t(row) + size > grid_h[image]))
      call.fail_range("rect " + std::to_string(t) + " does not fit its image's grid");
    cells = std::max(cells, grid_offset[image] + (int64_t(row) + size - 1) * grid_w[image] + col + size);
  }
  return cells;
}

// The first n elements of the int32 array `key` are indices in [lo, hi): "is not <what> (<hi> <unit>)".
void check_indices(const Call& call, const char* key, int64_t n, int64_t lo, int64_t hi, const char* what, const char* unit) {
  const int32_t* index = call.host<int32_t>(key, n);
  for (int64_t r = 0; r < n; ++r)
    if (index[r] < lo || index[r] >= hi)
      call.fail_range(std::string(key) + "[" + std::to_string(r) + "] = " + std::to_string(index[r]) + " is not " + what + " (" +
                      std::to_string(hi) + " " + unit + ")");
}

const step::TokenRect* rects_in(Call& call, int64_t tokens) {
  return reinterpret_cast<const step::TokenRect*>(call.array<int32_t>("rects", 4 * tokens, Use::kIn));
}

}  // namespace

// ---- the readers, in op_table.h's order ------------------------------------------------------------

step::GemmParams read_gemm(Call& call) {
  step::GemmParams p;
  const std::string epilogue = call.string_or("epilogue", "none");
  if (epilogue == "none") p.epilogue = step::Epilogue::kNone;
  else if (epilogue == "gelu") p.epilogue = step::Epilogue::kGelu;
  else if (epilogue == "residual") p.epilogue = step::Epilogue::kResidual;
  else if (epilogue == "relu6") p.epilogue = step::Epilogue::kRelu6;
  else if (epilogue == "sigmoid") p.epilogue = step::Epilogue::kSigmoid;
  else call.fail_type("one of 'none', 'gelu', 'residual', 'relu6', 'sigmoid'", "epilogue");
  p.M = call.integer("M"), p.N = call.integer("N"), p.K = call.integer("K");
  p.lda = call.integer_or("lda", p.K), p.ldc = call.integer_or("ldc", p.N);
  if (p.lda < p.K || p.ldc < p.N) call.fail_range("needs lda >= K and ldc >= N");
  const int64_t c_elems = span(p.M, p.ldc, p.N);
  if (!call.on_device()) {  // the CUDA gemm takes a and w as bf16 (cuda_prepare.cpp)
    p.a = call.array<float>("a", span(p.M, p.lda, p.K), Use::kIn);
    p.w = call.array<float>("w", int64_t(p.N) * p.K, Use::kIn);
  }
  p.bias = call.array<float>("bias", p.N, Use::kOptionalIn);
  if (p.epilogue == step::Epilogue::kResidual) {  // residual and colScale only count here
    p.residual = call.array<float>("residual", c_elems, Use::kOptionalIn);
    p.col_scale = call.array<float>("colScale", p.N, Use::kOptionalIn);
  }
  p.c = call.array<float>("c", c_elems, Use::kOutOrBf16);  // may be residual's array (in place)
  return p;
}

step::ConvParams read_conv(Call& call) {
  step::ConvParams p;
  p.batch = call.integer("batch"), p.in_h = call.integer("inH", 1), p.in_w = call.integer("inW", 1);
  p.in_c = call.integer("inC", 1), p.out_c = call.integer("outC", 1);
  p.kernel = call.integer("kernel", 1), p.stride = call.integer("stride", 1), p.pad = call.integer("pad");
  p.groups = call.integer_or("groups", 1, 1);
  const std::string act = call.string_or("act", "none");
  if (act == "relu6") p.act = step::Activation::kRelu6;
  else if (act != "none") call.fail_type("one of 'none', 'relu6'", "act");
  if (p.in_h + 2 * p.pad < p.kernel || p.in_w + 2 * p.pad < p.kernel) call.fail_range("kernel larger than the padded map");
  p.out_h = (p.in_h + 2 * p.pad - p.kernel) / p.stride + 1, p.out_w = (p.in_w + 2 * p.pad - p.kernel) / p.stride + 1;
  if (call.integer_or("outH", p.out_h) != p.out_h || call.integer_or("outW", p.out_w) != p.out_w)
    call.fail_range("outH x outW must be " + std::to_string(p.out_h) + " x " + std::to_string(p.out_w) +
                    " ((in + 2 * pad - kernel) / stride + 1), or left out");
  const bool depthwise = p.groups == p.in_c && p.out_c == p.in_c;
  if (p.groups != 1 && !depthwise) call.fail_range("groups must be 1 or inC = outC (depthwise)");
  const int64_t w_elems = int64_t(p.out_c) * (p.in_c / p.groups) * p.kernel * p.kernel;
  p.x = call.array<float>("x", int64_t(p.batch) * p.in_h * p.in_w * p.in_c, Use::kIn);
  p.w = call.array<float>("w", w_elems, Use::kIn);
  p.bias = call.array<float>("bias", p.out_c, Use::kOptionalIn);
  p.y = call.array<float>("y", int64_t(p.batch) * p.out_h * p.out_w * p.out_c, Use::kOut);
  return p;
}

step::AvgPoolParams read_avg_pool(Call& call) {
  step::AvgPoolParams p;
  p.in_h = call.integer("inH"), p.in_w = call.integer("inW"), p.C = call.integer("C", 1);
  p.factor = call.integer("factor", 1);
  p.out_h = call.integer_or("outH", p.in_h / p.factor), p.out_w = call.integer_or("outW", p.in_w / p.factor);
  if (int64_t(p.out_h) * p.factor > p.in_h || int64_t(p.out_w) * p.factor > p.in_w)
    call.fail_range("outH x outW blocks of factor x factor must fit in inH x inW");
  p.x = call.array<float>("x", int64_t(p.in_h) * p.in_w * p.C, Use::kIn);
  p.y = call.array<float>("y", int64_t(p.out_h) * p.out_w * p.C, Use::kOut);
  return p;
}

step::LayerNormParams read_layernorm(Call& call) {
  step::LayerNormParams p;
  p.rows = call.integer("rows"), p.C = call.integer("C", 1), p.eps = call.number_or("eps", kDefaultLayerNormEps);
  p.x = call.array<float>("x", int64_t(p.rows) * p.C, Use::kIn);
  p.gamma = call.array<float>("gamma", p.C, Use::kIn);
  p.beta = call.array<float>("beta", p.C, Use::kIn);
  p.y = call.array<float>("y", int64_t(p.rows) * p.C, Use::kOutOrBf16);
  return p;
}

step::AttentionParams read_attention(Call& call) {
  step::AttentionParams p;
  p.batch = call.integer("batch"), p.heads = call.integer("heads", 1), p.head_dim = call.integer("headDim", 1);
  p.scale = call.number_or("scale", 1.f / std::sqrt(float(p.head_dim)));
  const int64_t A = check_offsets(call, p.batch).rows, C = int64_t(p.heads) * p.head_dim;
  p.offsets = call.array<int32_t>("offsets", int64_t(p.batch) + 1, Use::kIn);
  p.qkv = call.array<float>("qkv", A * 3 * C, Use::kInOrBf16);
  p.out = call.array<float>("out", A * C, Use::kOutOrBf16);
  return p;
}

step::WindowScoreParams read_window_score(Call& call) {
  step::WindowScoreParams p;
  p.h = call.integer("h", 1), p.w = call.integer("w", 1), p.channels = call.integer_or("channels", 3, 3);
  p.patch = call.integer("patch", 1), p.gh = call.integer("gh", 1), p.gw = call.integer("gw", 1);
  p.color_tau = call.number("colorTau"), p.texture_tau = call.number("textureTau");
  if (int64_t(p.gh) * p.patch < p.h || int64_t(p.gw) * p.patch < p.w) call.fail_range("gh x gw patches must cover h x w");
  const int64_t scores = check_levels(call, &p.num_levels, p.gh, p.gw);
  p.image = call.array<uint8_t>("image", int64_t(p.h) * p.w * p.channels, Use::kIn);
  p.levels = call.array<int32_t>("levels", p.num_levels, Use::kIn);
  p.scores = call.array<float>("scores", scores, Use::kOut);
  return p;
}

step::SuperpatchSelectParams read_superpatch_select(Call& call) {
  step::SuperpatchSelectParams p;
  p.image = call.integer_or("image", 0), p.gh = call.integer("gh", 1), p.gw = call.integer("gw", 1);
  const int64_t scores = check_levels(call, &p.num_levels, p.gh, p.gw), cells = int64_t(p.gh) * p.gw;
  p.levels = call.array<int32_t>("levels", p.num_levels, Use::kIn);
  p.thresholds = call.array<float>("thresholds", p.num_levels, Use::kIn);
  p.scores = call.array<float>("scores", scores, Use::kIn);
  p.rects = reinterpret_cast<step::TokenRect*>(call.array<int32_t>("rects", 4 * cells, Use::kOut));
  p.count = call.array<int32_t>("count", 1, Use::kOut);
  p.token_of_patch = call.array<int32_t>("tokenOfPatch", cells, Use::kOut);
  return p;
}

step::PatchGatherParams read_patch_gather(Call& call) {
  step::PatchGatherParams p;
  p.images = call.integer("images"), p.height = call.integer("height"), p.width = call.integer("width");
  p.patch = call.integer("patch", 1), p.tokens = call.integer("tokens");
  const int32_t* rects = call.host<int32_t>("rects", 4 * int64_t(p.tokens));
  for (int t = 0; t < p.tokens; ++t) {
    const int32_t image = rects[4 * t], row = rects[4 * t + 1], col = rects[4 * t + 2], size = rects[4 * t + 3];
    if (image < 0 || image >= p.images || row < 0 || col < 0 || size < 1 ||
        (int64_t(row) + size) * p.patch > p.height || (int64_t(col) + size) * p.patch > p.width)
      call.fail_range("rect " + std::to_string(t) + " lies outside the images");
  }
  p.pixels = call.array<float>("pixels", int64_t(p.images) * 3 * p.height * p.width, Use::kIn);
  p.rects = rects_in(call, p.tokens);
  p.out = call.array<float>("out", p.tokens * 3 * int64_t(p.patch) * p.patch, Use::kOutOrBf16);
  return p;
}

step::TokenPosEmbedParams read_token_pos_embed(Call& call) {
  step::TokenPosEmbedParams p;
  p.batch = call.integer("batch"), p.C = call.integer("C", 1), p.prefix = call.integer("prefix");
  check_offsets(call, p.batch);
  const int32_t* offsets = call.host<int32_t>("offsets", int64_t(p.batch) + 1);
  for (int b = 0; b < p.batch; ++b)
    if (offsets[b + 1] - offsets[b] < p.prefix) call.fail_range("every image needs at least `prefix` rows");
  const int64_t A = offsets[p.batch], R = A - int64_t(p.batch) * p.prefix, C = p.C;  // rows, rects
  const int32_t* grid_offset = call.host<int32_t>("gridOffset", p.batch);
  const int32_t* grid_w = call.host<int32_t>("gridW", p.batch);
  const int32_t* rects = call.host<int32_t>("rects", 4 * R);
  int64_t grid_cells = 0;  // cells of posGrid the rects reach
  for (int64_t j = 0; j < R; ++j) {
    const int32_t image = rects[4 * j], row = rects[4 * j + 1], col = rects[4 * j + 2], size = rects[4 * j + 3];
    // Rect j is row j + (image + 1) * prefix of out: the rects must come in image order,
    // offsets[b + 1] - offsets[b] - prefix of them for image b.
    const int64_t out_row = j + int64_t(image + 1) * p.prefix;
    if (image < 0 || image >= p.batch || out_row < offsets[image] + p.prefix || out_row >= offsets[image + 1] ||
        row < 0 || col < 0 || size < 1 || grid_offset[image] < 0 || col + size > grid_w[image])
      call.fail_range("rect " + std::to_string(j) + " does not fit the offsets or its image's grid");
    grid_cells = std::max(grid_cells, grid_offset[image] + (int64_t(row) + size - 1) * grid_w[image] + col + size);
  }
  p.offsets = call.array<int32_t>("offsets", int64_t(p.batch) + 1, Use::kIn);
  p.grid_offset = call.array<int32_t>("gridOffset", p.batch, Use::kIn);
  p.grid_w = call.array<int32_t>("gridW", p.batch, Use::kIn);
  p.rects = rects_in(call, R);
  p.prefix_tokens = call.array<float>("prefixTokens", p.prefix * C, p.prefix ? Use::kIn : Use::kOptionalIn);
  p.pos_prefix = call.array<float>("posPrefix", p.prefix * C, Use::kOptionalIn);
  p.pos_grid = call.array<float>("posGrid", grid_cells * C, Use::kIn);
  p.embedded = call.array<float>("embedded", R * C, Use::kIn);
  p.out = call.array<float>("out", A * C, Use::kOut);
  return p;
}

step::UnshareParams read_unshare(Call& call) {
  step::UnshareParams p;
  p.K = call.integer("K", 1), p.tokens = call.integer("tokens");
  const std::string mode = call.string_or("mode", "");
  if (mode != "copy" && mode != "blend") call.fail_type("'copy' or 'blend'", "mode");
  p.mode = mode == "blend" ? step::UnshareMode::kBlend : step::UnshareMode::kCopy;
  const bool blend = p.mode == step::UnshareMode::kBlend;
  const int64_t images = call.length<int32_t>("gridOffset");
  const int64_t cells = check_rects(call, p.tokens, blend);  // cells of grid the rects reach
  p.rects = rects_in(call, p.tokens);
  p.logits = call.array<float>("logits", int64_t(p.tokens) * p.K, Use::kIn);
  p.grid_offset = call.array<int32_t>("gridOffset", images, Use::kIn);
  p.grid_w = call.array<int32_t>("gridW", images, Use::kIn);
  p.grid = call.array<float>("grid", cells * p.K, Use::kOut);
  if (blend) {
    p.grid_h = call.array<int32_t>("gridH", images, Use::kIn);
    p.flat = call.array<float>("flat", cells * p.K, Use::kOut);
  }
  return p;
}

step::TokenHaltParams read_token_halt(Call& call) {
  step::TokenHaltParams p;
  p.batch = call.integer("batch"), p.K = call.integer("K", 1), p.prefix = call.integer_or("prefix", 0);
  p.threshold = call.number("threshold"), p.top_k = call.integer("topK");
  const int64_t A = check_offsets(call, p.batch).rows;
  p.offsets = call.array<int32_t>("offsets", int64_t(p.batch) + 1, Use::kIn);
  p.logits = call.array<float>("logits", A * p.K, Use::kIn);
  p.halt = call.array<uint8_t>("halt", A, Use::kOut);
  if (call.has("cellLabel")) {  // agreement: rectOfRow, rects, gridOffset, gridH, gridW, cellLabel
    const int64_t images = call.length<int32_t>("gridOffset"), tokens = call.length<int32_t>("rects") / 4;
    const int64_t cells = check_rects(call, tokens, true);
    const int32_t* rect_of_row = call.host<int32_t>("rectOfRow", A);
    for (int64_t r = 0; r < A; ++r)
      if (rect_of_row[r] < -1 || rect_of_row[r] >= tokens) call.fail_range("rectOfRow[" + std::to_string(r) + "] is not a rect");
    p.rect_of_row = call.array<int32_t>("rectOfRow", A, Use::kIn);
    p.rects = rects_in(call, tokens);
    p.grid_offset = call.array<int32_t>("gridOffset", images, Use::kIn);
    p.grid_h = call.array<int32_t>("gridH", images, Use::kIn), p.grid_w = call.array<int32_t>("gridW", images, Use::kIn);
    p.cell_label = call.array<int32_t>("cellLabel", cells, Use::kOut);
  }
  return p;
}

step::TokenCompactParams read_token_compact(Call& call) {
  step::TokenCompactParams p;
  p.batch = call.integer("batch"), p.C = call.integer("C", 1);
  const int64_t A = check_offsets(call, p.batch).rows;
  const uint8_t* halt = call.host<uint8_t>("halt", A);
  int64_t kept = 0;
  for (int64_t r = 0; r < A; ++r) kept += halt[r] ? 0 : 1;
  p.offsets = call.array<int32_t>("offsets", int64_t(p.batch) + 1, Use::kIn);
  p.halt = call.array<uint8_t>("halt", A, Use::kIn);
  p.x = call.array<float>("x", A * p.C, Use::kIn);
  p.out = call.array<float>("out", kept * p.C, Use::kOut);
  p.new_offsets = call.array<int32_t>("newOffsets", int64_t(p.batch) + 1, Use::kOut);
  p.src_row = call.array<int32_t>("srcRow", kept, Use::kOut);
  return p;
}

step::TokenScatterParams read_token_scatter(Call& call) {
  step::TokenScatterParams p;
  p.rows = call.integer("rows"), p.K = call.integer("K", 1);
  const int64_t table_rows = call.length<float>("table") / p.K;
  const int32_t* index = call.host<int32_t>("index", p.rows);
  for (int r = 0; r < p.rows; ++r)
    if (index[r] >= table_rows)
      call.fail_range("index[" + std::to_string(r) + "] = " + std::to_string(index[r]) + " is not a row of table (" +
                      std::to_string(table_rows) + " rows)");
  p.src = call.array<float>("src", int64_t(p.rows) * p.K, Use::kIn);
  p.index = call.array<int32_t>("index", p.rows, Use::kIn);
  p.mask = call.array<uint8_t>("mask", p.rows, Use::kOptionalIn);
  p.table = call.array<float>("table", table_rows * p.K, Use::kOut);
  return p;
}

step::TokenRowsInitParams read_token_rows_init(Call& call) {
  step::TokenRowsInitParams p;
  p.batch = call.integer("batch"), p.prefix = call.integer_or("prefix", 0), p.depth = call.integer("depth");
  const int64_t A = check_offsets(call, p.batch).rows;
  const int32_t* offsets = call.host<int32_t>("offsets", int64_t(p.batch) + 1);
  for (int b = 0; b < p.batch; ++b)
    if (offsets[b + 1] - offsets[b] < p.prefix) call.fail_range("every image needs at least `prefix` rows");
  p.offsets = call.array<int32_t>("offsets", int64_t(p.batch) + 1, Use::kIn);
  p.rect_of_row = call.array<int32_t>("rectOfRow", A, Use::kOut);
  p.rect_exit = call.array<int32_t>("rectExit", A - int64_t(p.batch) * p.prefix, Use::kOut);
  return p;
}

step::TokenExitMarkParams read_token_exit_mark(Call& call) {
  step::TokenExitMarkParams p;
  p.rows = call.integer("rows"), p.layer = call.integer("layer");
  const int64_t rects = call.length<int32_t>("rectExit");
  check_indices(call, "rectOfRow", p.rows, -1, rects, "a rect of rectExit or -1", "rects");
  p.halt = call.array<uint8_t>("halt", p.rows, Use::kIn);
  p.rect_of_row = call.array<int32_t>("rectOfRow", p.rows, Use::kIn);
  p.rect_exit = call.array<int32_t>("rectExit", rects, Use::kOut);
  return p;
}

step::TokenGatherParams read_token_gather(Call& call) {
  step::TokenGatherParams p;
  p.rows = call.integer("rows");
  const int64_t in_rows = call.length<int32_t>("in");
  check_indices(call, "srcRow", p.rows, 0, in_rows, "a row of in", "rows");
  p.src_row = call.array<int32_t>("srcRow", p.rows, Use::kIn);
  p.in = call.array<int32_t>("in", in_rows, Use::kIn);
  p.out = call.array<int32_t>("out", p.rows, Use::kOut);
  return p;
}

step::TokenPackParams read_token_pack(Call& call) {
  step::TokenPackParams p;
  p.batch = call.integer("batch"), p.prefix = call.integer_or("prefix", 0);
  const int64_t staged = call.length<int32_t>("stage") / 4;  // rects in stage
  const int32_t* counts = call.host<int32_t>("counts", p.batch);
  const int32_t* grid_offset = call.host<int32_t>("gridOffset", p.batch);
  int64_t total = 0;
  for (int b = 0; b < p.batch; ++b) {
    if (counts[b] < 0 || grid_offset[b] < 0 || int64_t(grid_offset[b]) + counts[b] > staged)
      call.fail_range("image " + std::to_string(b) + "'s rects (gridOffset, counts) lie outside stage (" +
                      std::to_string(staged) + " rects)");
    total += counts[b];
  }
  if (total + int64_t(p.batch) * p.prefix > 2147483647) call.fail_range("more than 2^31 - 1 rows");
  p.counts = call.array<int32_t>("counts", p.batch, Use::kIn);
  p.grid_offset = call.array<int32_t>("gridOffset", p.batch, Use::kIn);
  p.stage = reinterpret_cast<const step::TokenRect*>(call.array<int32_t>("stage", 4 * staged, Use::kIn));
  p.rects = reinterpret_cast<step::TokenRect*>(call.array<int32_t>("rects", 4 * total, Use::kOut));
  p.offsets = call.array<int32_t>("offsets", int64_t(p.batch) + 1, Use::kOut);
  p.rect_count = call.array<int32_t>("rectCount", 1, Use::kOut);
  return p;
}

step::PosResampleParams read_pos_resample(Call& call) {
  step::PosResampleParams p;
  p.C = call.integer("C", 1), p.src_h = call.integer("srcH", 1), p.src_w = call.integer("srcW", 1);
  p.dst_h = call.integer("dstH", 1), p.dst_w = call.integer("dstW", 1);
  p.src = call.array<float>("src", int64_t(p.src_h) * p.src_w * p.C, Use::kIn);
  p.dst = call.array<float>("dst", int64_t(p.dst_h) * p.dst_w * p.C, Use::kOut);
  return p;
}

step::ImageNormalizeParams read_image_normalize(Call& call) {
  step::ImageNormalizeParams p;
  p.h = call.integer("h"), p.w = call.integer("w"), p.channels = call.integer_or("channels", 3);
  if (p.channels != 3 && p.channels != 4) call.fail_type("3 or 4", "channels");
  // outH / outW default to h / w and may only pad (integer() takes a minimum, not a default).
  p.out_h = call.integer_or("outH", p.h, p.h), p.out_w = call.integer_or("outW", p.w, p.w);
  const std::vector<float> mean = call.numbers("mean", 3), stdv = call.numbers("std", 3);
  for (int c = 0; c < 3; ++c) p.mean[c] = mean[c], p.std[c] = stdv[c];
  p.channels_last = call.boolean_or("channelsLast", false);
  p.src = call.array<uint8_t>("src", int64_t(p.h) * p.w * p.channels, Use::kIn);
  p.out = call.array<float>("out", 3 * int64_t(p.out_h) * p.out_w, Use::kOut);
  return p;
}

step::UpsampleParams read_upsample(Call& call) {
  step::UpsampleParams p;
  p.K = call.integer("K", 1), p.gh = call.integer("gh", 1), p.gw = call.integer("gw", 1);
  p.patch = call.integer("patch", 1);
  p.valid_h = call.integer("validH", 1), p.valid_w = call.integer("validW", 1);
  p.out_h = call.integer("outH"), p.out_w = call.integer("outW");
  const int64_t pixels = int64_t(p.out_h) * p.out_w;
  p.logits = call.array<float>("logits", int64_t(p.gh) * p.gw * p.K, Use::kIn);
  p.labels = call.array<int32_t>("labels", pixels, Use::kOut);
  p.probs = call.array<float>("probs", pixels * p.K, Use::kOptionalOut);
  return p;
}

}  // namespace step::addon
