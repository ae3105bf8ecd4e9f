// ptx.cpp: host twins of the PTX instructions that mma.cuh wraps, written from the PTX ISA (not from
// mma.cuh's comments): cp.async.cg 16 bytes with commit_group / wait_group, ldmatrix.sync.aligned
// .m8n8.x4(.trans).shared.b16 and mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32.
//
// cp.async: a copy is queued in the issuing thread's open group and its 16 destination bytes are
// poisoned at once; it lands (the bytes are copied, or zero-filled when the source size is 0) only
// when a cp.async.wait_group that covers its group retires, as the ISA allows. A kernel that reads
// its tile before waiting (or before the __syncthreads that publishes other threads' copies) reads
// NaN, or is reported by the race detector.
// ldmatrix and mma are warp collectives: all 32 lanes must arrive with a full mask (.sync.aligned).
//   ldmatrix .x4: lanes 8i..8i+7 give the row addresses of matrix i (16-byte aligned rows of 8 b16);
//     lane l receives in register j the elements 2(l%4), 2(l%4)+1 of row l/4 of matrix j; .trans
//     receives element l/4 of rows 2(l%4) and 2(l%4)+1 instead (the transposed matrix).
//   mma m16n8k16, lane l, g = l/4, t = l%4 (ISA "Matrix Fragments for mma.m16n8k16 with floating
//     point type"): A row-major a0:(g, 2t..2t+1) a1:(g+8, 2t..) a2:(g, 2t+8..) a3:(g+8, 2t+8..);
//     B "col" b0:(k = 2t..2t+1, n = g) b1:(k = 2t+8.., n = g); C/D c0,c1:(g, 2t..2t+1) c2,c3:(g+8, ..).
//     The products of bf16 are exact in double; the sum is formed in double and rounded once to
//     float32, so every exactly representable result is bit-exact whatever the hardware's order.
#include "ptx.h"

#include <cstring>

#include "simt.h"

namespace step_emu {
namespace {

const char kLdmatrixSite[] = "ldmatrix.sync.aligned.m8n8.x4.shared.b16";
const char kLdmatrixTransSite[] = "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16";
const char kMmaSite[] = "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32";

double bf16_value(uint32_t bits16) {
  const uint32_t f = bits16 << 16;
  float v;
  std::memcpy(&v, &f, 4);
  return v;
}

void complete_ldmatrix(CollectiveKind kind, unsigned, const LaneInput* in, int warp) {
  uint16_t rows[32][8];
  for (int r = 0; r < 32; ++r) {
    const void* p = reinterpret_cast<const void*>(in[r].v[0]);
    const Fiber& owner = fiber_of_lane(warp, r);
    if (reinterpret_cast<uintptr_t>(p) % 16)
      fault(cudaErrorMisalignedAddress, "ldmatrix row address of lane " + std::to_string(r) + " is not 16-byte aligned");
    access_shared(p, 16, false, owner, kind == CollectiveKind::kLdmatrix ? kLdmatrixSite : kLdmatrixTransSite);
    std::memcpy(rows[r], p, 16);
  }
  for (int l = 0; l < 32; ++l) {
    Fiber& f = fiber_of_lane(warp, l);
    for (int j = 0; j < 4; ++j) {
      uint32_t lo, hi;
      if (kind == CollectiveKind::kLdmatrix) {
        lo = rows[8 * j + l / 4][2 * (l % 4)], hi = rows[8 * j + l / 4][2 * (l % 4) + 1];
      } else {
        lo = rows[8 * j + 2 * (l % 4)][l / 4], hi = rows[8 * j + 2 * (l % 4) + 1][l / 4];
      }
      f.result[j] = lo | hi << 16;
    }
  }
}

void complete_mma(CollectiveKind, unsigned, const LaneInput* in, int warp) {
  double A[16][16], B[16][8], C[16][8];  // A[m][k], B[k][n], C[m][n]
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    const uint32_t a[4] = {uint32_t(in[l].v[0]), uint32_t(in[l].v[0] >> 32), uint32_t(in[l].v[1]), uint32_t(in[l].v[1] >> 32)};
    const uint32_t b[2] = {uint32_t(in[l].v[2]), uint32_t(in[l].v[2] >> 32)};
    float c[4];
    std::memcpy(c, &in[l].v[3], 16);
    for (int h = 0; h < 2; ++h) {
      const int k = 2 * t + h;
      A[g][k] = bf16_value(a[0] >> (16 * h) & 0xffff);
      A[g + 8][k] = bf16_value(a[1] >> (16 * h) & 0xffff);
      A[g][k + 8] = bf16_value(a[2] >> (16 * h) & 0xffff);
      A[g + 8][k + 8] = bf16_value(a[3] >> (16 * h) & 0xffff);
      B[k][g] = bf16_value(b[0] >> (16 * h) & 0xffff);
      B[k + 8][g] = bf16_value(b[1] >> (16 * h) & 0xffff);
      C[g][2 * t + h] = c[h];
      C[g + 8][2 * t + h] = c[2 + h];
    }
  }
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    Fiber& f = fiber_of_lane(warp, l);
    float d[4];
    for (int r = 0; r < 4; ++r) {
      const int m = g + (r >= 2 ? 8 : 0), n = 2 * t + (r & 1);
      double s = C[m][n];
      for (int k = 0; k < 16; ++k) s += A[m][k] * B[k][n];
      d[r] = float(s);
    }
    std::memcpy(f.result, d, 16);
  }
}

}  // namespace

void ptx_cp_async_16(void* smem_dst, const void* gmem_src, bool valid) {
  Fiber& f = current_fiber();
  if (reinterpret_cast<uintptr_t>(smem_dst) % 16)
    fault(cudaErrorMisalignedAddress, "cp.async destination is not 16-byte aligned");
  access_shared(smem_dst, 16, true, f, "cp.async (issue)");
  if (valid) {
    if (reinterpret_cast<uintptr_t>(gmem_src) % 16)
      fault(cudaErrorMisalignedAddress, "cp.async source is not 16-byte aligned");
    access_global(gmem_src, 16, "cp.async source");
  }
  std::memset(smem_dst, kPoison, 16);  // not landed yet
  f.open_group.push_back({static_cast<uint8_t*>(smem_dst), static_cast<const uint8_t*>(gmem_src), valid});
}

void ptx_cp_async_commit() {
  Fiber& f = current_fiber();
  f.committed.push_back(std::move(f.open_group));
  f.open_group.clear();
}

void ptx_cp_async_wait(int pending) {
  Fiber& f = current_fiber();
  while (int(f.committed.size()) > pending) {
    for (const CpAsyncCopy& c : f.committed.front()) {
      access_shared(c.dst, 16, true, f, "cp.async (landing)");
      if (c.valid) std::memcpy(c.dst, c.src, 16);
      else std::memset(c.dst, 0, 16);
    }
    f.committed.pop_front();
  }
}

void ptx_ldmatrix_x4(uint32_t (&r)[4], const void* smem_row, bool trans) {
  LaneInput in{{reinterpret_cast<uint64_t>(smem_row), 0, 0, 0, 0, 0}};
  warp_collective(trans ? CollectiveKind::kLdmatrixTrans : CollectiveKind::kLdmatrix, 0xffffffffu, in,
                  trans ? kLdmatrixTransSite : kLdmatrixSite, complete_ldmatrix);
  const Fiber& f = current_fiber();
  for (int j = 0; j < 4; ++j) r[j] = uint32_t(f.result[j]);
}

void ptx_mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  LaneInput in{};
  in.v[0] = a[0] | uint64_t(a[1]) << 32;
  in.v[1] = a[2] | uint64_t(a[3]) << 32;
  in.v[2] = b0 | uint64_t(b1) << 32;
  std::memcpy(&in.v[3], d, 16);
  warp_collective(CollectiveKind::kMma, 0xffffffffu, in, kMmaSite, complete_mma);
  std::memcpy(d, current_fiber().result, 16);
}

}  // namespace step_emu
