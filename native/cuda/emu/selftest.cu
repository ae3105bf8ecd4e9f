// selftest.cu: the emulator's own tests (emulator build only; driven by test/emu/emulator.test.ts
// through the addon's `emuOps`). Two kinds of kernel, written as CUDA like the rest of native/cuda:
//   - probes of the PTX twins: one warp runs mma.sync / ldmatrix on per-lane inputs that the test takes
//     from ../shared/ptx-vectors, so the emulator's instructions are checked against CuTe's tables;
//   - planted bugs, each with its correct twin: the buggy variant must be caught (a fault naming the
//     kernel, or wrong output the test sees) and the correct one must pass, so a check that never fires
//     and a check that always fires both fail the test.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "../common.cuh"
#include "../launch.cuh"
#include "../mma.cuh"
#include "../test_support.h"
#include "selftest.h"

namespace step::cuda {
namespace {

// ---- PTX probes ----------------------------------------------------------------------------------------

__global__ void selftest_mma_kernel(const uint32_t* a, const uint32_t* b, const float* c, float* d) {
  const int l = threadIdx.x;
  const uint32_t af[4] = {a[4 * l], a[4 * l + 1], a[4 * l + 2], a[4 * l + 3]};
  float acc[4] = {c[4 * l], c[4 * l + 1], c[4 * l + 2], c[4 * l + 3]};
  mma_bf16_16816(acc, af, b[2 * l], b[2 * l + 1]);
  for (int r = 0; r < 4; ++r) d[4 * l + r] = acc[r];
}

// smem: 1024 b16 copied into shared memory; lane l gives the row at element addr[l].
__global__ void selftest_ldmatrix_kernel(const uint16_t* smem, const int32_t* addr, int trans, uint32_t* out) {
  STEP_DYNAMIC_SMEM(uint16_t, tile);
  const int l = threadIdx.x;
  for (int i = l; i < 1024; i += 32) tile[i] = smem[i];
  __syncthreads();
  uint32_t r[4];
  if (trans) ldmatrix_x4_trans(r, tile + addr[l]);
  else ldmatrix_x4(r, tile + addr[l]);
  for (int j = 0; j < 4; ++j) out[4 * l + j] = r[j];
}

// ---- planted bugs ---------------------------------------------------------------------------------------

// One 16 x 8 x 16 tile, D = A B^T, A (16, 16) and B (8, 16) bf16 row-major in global memory, the
// fragments gathered by hand from the ISA's layout. The planted bug reads row g + 1 for a0.
__global__ void planted_fragment_kernel(const uint16_t* A, const uint16_t* B, float* D, int bug) {
  const int l = threadIdx.x, g = l / 4, t = l % 4;
  auto pair = [](const uint16_t* p) { return uint32_t(p[0]) | uint32_t(p[1]) << 16; };
  const int g0 = bug ? (g + 1) % 16 : g;
  const uint32_t a[4] = {pair(A + g0 * 16 + 2 * t), pair(A + (g + 8) * 16 + 2 * t), pair(A + g * 16 + 2 * t + 8),
                         pair(A + (g + 8) * 16 + 2 * t + 8)};
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  mma_bf16_16816(acc, a, pair(B + g * 16 + 2 * t), pair(B + g * 16 + 2 * t + 8));
  D[g * 8 + 2 * t] = acc[0], D[g * 8 + 2 * t + 1] = acc[1];
  D[(g + 8) * 8 + 2 * t] = acc[2], D[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

// Each thread publishes x in shared memory and reads its neighbour's: a race without the barrier.
__global__ void planted_barrier_kernel(const float* x, float* y, int bug) {
  __shared__ float s[128];
  const int i = threadIdx.x;
  s[i] = x[i];
  if (!bug) __syncthreads();
  y[i] = s[(i + 1) % blockDim.x];
}

// A 16-byte-per-thread tile through cp.async; the planted bug skips the wait_group before the barrier.
__global__ void planted_wait_group_kernel(const float* x, float* y, int bug) {
  STEP_DYNAMIC_SMEM(float, tile);
  const int i = threadIdx.x;
  cp_async_16(tile + 4 * i, x + 4 * i, true);
  cp_async_commit();
  if (!bug) cp_async_wait<0>();
  __syncthreads();
  const int j = (i + 1) % blockDim.x;
  for (int k = 0; k < 4; ++k) y[4 * i + k] = tile[4 * j + k];
}

// Reads x[i + 1] for the last i too when buggy: one element past the allocation.
__global__ void planted_past_end_kernel(const float* x, float* y, int n, int bug) {
  const int i = threadIdx.x;
  if (i < n) y[i] = x[bug ? i + 1 : (i + 1) % n];
}

// float4 loads from x + 1 (4-byte aligned only) when buggy, x + 4 otherwise.
__global__ void planted_misaligned_kernel(const float* x, float* y, int bug) {
  const float4 v = reinterpret_cast<const float4*>(x + (bug ? 1 : 4))[threadIdx.x];
  y[threadIdx.x] = v.x + v.y + v.z + v.w;
}

// Half of the block leaves before a barrier the other half waits at.
__global__ void planted_early_exit_kernel(const float* x, float* y, int bug) {
  __shared__ float s[64];
  const int i = threadIdx.x;
  if (bug && i >= 32) return;
  s[i] = x[i];
  __syncthreads();
  if (i < 32) y[i] = s[63 - i];
}

// A warp sum whose shuffle mask names half of the warp while every lane calls it.
__global__ void planted_mask_kernel(const float* x, float* y, int bug) {
  float v = x[threadIdx.x];
  const unsigned mask = bug ? 0x0000ffffu : 0xffffffffu;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(mask, v, o);
  y[threadIdx.x] = v;
}

__global__ void selftest_add_kernel(float* x, float v) { x[threadIdx.x] += v; }

}  // namespace

std::vector<std::string> selftest_capture() {
  std::vector<std::string> out;
  auto note = [&](const char* what, cudaError_t err) {
    out.push_back(std::string(what) + ": " + cudaGetErrorName(err));
    cudaGetLastError();
  };
  cudaStream_t s = nullptr;
  STEP_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  float* x = nullptr;
  STEP_CUDA_CHECK(cudaMalloc(&x, 32 * 4));
  STEP_CUDA_CHECK(cudaMemset(x, 0, 32 * 4));
  float host[32];
  // A legal capture: the launches are recorded, not run, then replayed once per graph launch.
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  note("begin", cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  launch<selftest_add_kernel>(1, 32, 0, s, x, 1.f);
  launch<selftest_add_kernel>(1, 32, 0, s, x, 2.f);
  note("end", cudaStreamEndCapture(s, &graph));
  STEP_CUDA_CHECK(cudaMemcpy(host, x, 4, cudaMemcpyDeviceToHost));
  out.push_back("after capture: " + std::to_string(host[0]));
  note("instantiate", cudaGraphInstantiate(&exec, graph, 0));
  note("launch", cudaGraphLaunch(exec, s));
  note("launch", cudaGraphLaunch(exec, s));
  STEP_CUDA_CHECK(cudaStreamSynchronize(s));
  STEP_CUDA_CHECK(cudaMemcpy(host, x, 4, cudaMemcpyDeviceToHost));
  out.push_back("after two replays: " + std::to_string(host[0]));
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  // What a capture forbids: each fails and invalidates the capture.
  auto illegal = [&](const char* what, auto body) {
    cudaGraph_t g = nullptr;
    cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
    note(what, body());
    note((std::string(what) + ", then end").c_str(), cudaStreamEndCapture(s, &g));
    if (g) cudaGraphDestroy(g);
  };
  illegal("stream synchronize", [&] { return cudaStreamSynchronize(s); });
  illegal("malloc", [&] {
    void* p = nullptr;
    return cudaMalloc(&p, 64);
  });
  illegal("copy from pageable memory", [&] { return cudaMemcpyAsync(x, host, 4, cudaMemcpyHostToDevice, s); });
  illegal("device synchronize", [&] { return cudaDeviceSynchronize(); });
  STEP_CUDA_CHECK(cudaFree(x));
  STEP_CUDA_CHECK(cudaStreamDestroy(s));
  return out;
}

void selftest_mma(const uint32_t* a, const uint32_t* b, const float* c, float* d) {
  DeviceBuffer da(32 * 4 * 4), db(32 * 2 * 4), dc(32 * 4 * 4), dd(32 * 4 * 4);
  da.upload(a), db.upload(b), dc.upload(c);
  launch<selftest_mma_kernel>(1, 32, 0, nullptr, static_cast<const uint32_t*>(da.data()),
                              static_cast<const uint32_t*>(db.data()), static_cast<const float*>(dc.data()),
                              static_cast<float*>(dd.data()));
  STEP_CUDA_CHECK_LAUNCH();
  dd.download(d);
}

void selftest_ldmatrix(const uint16_t* smem, const int32_t* addr, bool trans, uint32_t* out) {
  DeviceBuffer ds(1024 * 2), da(32 * 4), dout(32 * 4 * 4);
  ds.upload(smem), da.upload(addr);
  launch<selftest_ldmatrix_kernel>(1, 32, 2048, nullptr, static_cast<const uint16_t*>(ds.data()),
                                   static_cast<const int32_t*>(da.data()), int(trans), static_cast<uint32_t*>(dout.data()));
  STEP_CUDA_CHECK_LAUNCH();
  dout.download(out);
}

std::vector<std::string> planted_bug_names() {
  return {"fragment", "barrier", "wait_group", "past_end", "misaligned", "early_exit", "mask"};
}

// Runs one planted kernel on `x`; returns its output (the caller compares it) or throws the fault.
std::vector<float> run_planted(const std::string& name, bool bug, const std::vector<float>& x) {
  const int bugi = bug ? 1 : 0;
  std::vector<float> y;
  auto run = [&](size_t out_elems, auto body) {
    DeviceBuffer dx(x.size() * 4), dy(out_elems * 4);
    dx.upload(x.data());
    body(static_cast<const float*>(dx.data()), static_cast<float*>(dy.data()));
    STEP_CUDA_CHECK_LAUNCH();
    y.resize(out_elems);
    dy.download(y.data());
  };
  if (name == "fragment") {  // x: A (16 x 16) then B (8 x 16), as bf16 values in float32
    std::vector<uint16_t> ab(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      uint32_t bits;
      std::memcpy(&bits, &x[i], 4);
      ab[i] = uint16_t(bits >> 16);
    }
    DeviceBuffer dab(ab.size() * 2), dd(16 * 8 * 4);
    dab.upload(ab.data());
    const uint16_t* A = static_cast<const uint16_t*>(dab.data());
    launch<planted_fragment_kernel>(1, 32, 0, nullptr, A, A + 256, static_cast<float*>(dd.data()), bugi);
    STEP_CUDA_CHECK_LAUNCH();
    y.resize(128);
    dd.download(y.data());
  } else if (name == "barrier") {
    run(x.size(), [&](const float* dx, float* dy) { launch<planted_barrier_kernel>(1, int(x.size()), 0, nullptr, dx, dy, bugi); });
  } else if (name == "wait_group") {
    run(x.size(), [&](const float* dx, float* dy) {
      launch<planted_wait_group_kernel>(1, int(x.size() / 4), x.size() * 4, nullptr, dx, dy, bugi);
    });
  } else if (name == "past_end") {
    run(x.size(), [&](const float* dx, float* dy) {
      launch<planted_past_end_kernel>(1, int(x.size()), 0, nullptr, dx, dy, int(x.size()), bugi);
    });
  } else if (name == "misaligned") {  // x: 4 * 32 + 4 floats
    run(32, [&](const float* dx, float* dy) { launch<planted_misaligned_kernel>(1, 32, 0, nullptr, dx, dy, bugi); });
  } else if (name == "early_exit") {
    run(32, [&](const float* dx, float* dy) { launch<planted_early_exit_kernel>(1, 64, 0, nullptr, dx, dy, bugi); });
  } else if (name == "mask") {
    run(32, [&](const float* dx, float* dy) { launch<planted_mask_kernel>(1, 32, 0, nullptr, dx, dy, bugi); });
  } else {
    throw Error(ErrorCode::kBadInput, "no planted bug named " + name);
  }
  return y;
}

}  // namespace step::cuda
