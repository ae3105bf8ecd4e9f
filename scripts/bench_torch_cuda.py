#!/usr/bin/env python3
"""bench_torch_cuda.py: PyTorch's bf16 GEMM and attention at the shapes scripts/bench-cuda.ts times, on
the same GPU, for the comparison column of its table (bench-cuda.ts spawns this with --json in the same
run, after its own timings, so the two never share the GPU).

What is timed, as a PyTorch user of a timm ViT runs it:
  gemm       F.linear(a, w, bias): a (M, K), w (N, K), bias (N), all bf16, output (M, N) bf16
             (cuBLASLt, bias fused), FLOPs 2 M N K.
  attention  F.scaled_dot_product_attention(q, k, v) in bf16 with q, k, v the strided views of one
             packed (1, T, 3, H, D) qkv tensor, as timm's Attention makes them (permute + unbind);
             PyTorch picks the backend (flash, cuDNN or memory-efficient); each backend is also
             timed on its own where it runs, reported in the JSON as `backends`. FLOPs 4 T^2 H D.
  models     timm's vit_{small,base,large}_patch16_224 at img_size N (random weights, num_classes 0),
             weights and input in bf16, eval, no_grad: forward_features of a (1, 3, N, N) input already
             on the GPU (bench-cuda-model.ts asks for these with "models": [[name, N], ...]).
Timing as bench-cuda.ts does it (native/cuda/test_support.h): 2 warm-up calls, then N calls enqueued
back to back, each between two CUDA events, one synchronise; the median of the N per-call times.

Usage:
  python3 scripts/bench_torch_cuda.py                     # the default ViT-S/B/L shapes, a table
  python3 scripts/bench_torch_cuda.py --json --iterations 50 \
      --spec '{"gemm": [[1025, 1152, 384]], "attention": [[1024, 6, 64]]}'
--json prints one JSON object on the last line of stdout: {"torch", "device", "gemm": [{M, N, K, ms}],
"attention": [{T, H, D, ms, backends}]} or, when PyTorch or a GPU is missing, {"error": why}; the exit
status is 0 either way (the caller reports the reason).
"""
import argparse
import json
import statistics
import sys

# The standalone run's shapes: those of the case tables bench-cuda.ts reads (scripts/cases/sizes.ts,
# gemm.ts, attention.ts), which it passes with --spec.
WIDTHS = [(384, 6), (768, 12), (1024, 16)]  # ViT-S, -B, -L: (C, heads of D = 64)
TOKENS = [1025, 2305, 4097]                 # 512^2, 768^2, 1024^2 images, patch 16, plus the class token


def default_spec():
    gemm = []
    for M in TOKENS:
        for C, _ in WIDTHS:
            gemm += [[M, 3 * C, C], [M, C, C], [M, 4 * C, C], [M, C, 4 * C]]  # qkv, proj, fc1, fc2
    attention = [[T, H, 64] for T in (1024, 2304, 4096) for _, H in WIDTHS]
    return {"gemm": gemm, "attention": attention, "models": []}


def time_ms(torch, fn, iterations, warmup=2):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
    stops = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
    for start, stop in zip(starts, stops):
        start.record()
        fn()
        stop.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(stop) for start, stop in zip(starts, stops))


def run(spec, iterations):
    try:
        import torch
        import torch.nn.functional as F
    except Exception as err:  # no torch, or one that fails to import
        return {"error": f"PyTorch cannot be imported: {err}"}
    if not torch.cuda.is_available():
        return {"error": f"PyTorch {torch.__version__} sees no CUDA device"}
    dev, bf16 = torch.device("cuda"), torch.bfloat16
    torch.manual_seed(0)
    result = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0), "gemm": [], "attention": []}

    for M, N, K in spec["gemm"]:
        a = torch.randn(M, K, device=dev, dtype=bf16)
        w = torch.randn(N, K, device=dev, dtype=bf16)
        bias = torch.randn(N, device=dev, dtype=bf16)
        with torch.no_grad():
            ms = time_ms(torch, lambda: F.linear(a, w, bias), iterations)
        result["gemm"].append({"M": M, "N": N, "K": K, "ms": ms})
        del a, w, bias

    backends = {}
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                    "efficient": SDPBackend.EFFICIENT_ATTENTION}
    except Exception:  # older PyTorch: the default choice only
        sdpa_kernel = None
    for T, H, D in spec["attention"]:
        qkv = torch.randn(1, T, 3, H, D, device=dev, dtype=bf16)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (1, H, T, D) each, as timm's Attention
        with torch.no_grad():
            ms = time_ms(torch, lambda: F.scaled_dot_product_attention(q, k, v), iterations)
            per_backend = {}
            for name, backend in backends.items():
                try:
                    with sdpa_kernel([backend]):
                        per_backend[name] = time_ms(torch, lambda: F.scaled_dot_product_attention(q, k, v), iterations)
                except Exception:  # this backend cannot run the shape or is not built in
                    pass
        result["attention"].append({"T": T, "H": H, "D": D, "ms": ms, "backends": per_backend})
        del qkv, q, k, v

    result["models"] = []
    for name, size in spec.get("models", []):
        try:
            import timm
        except Exception as err:
            return dict(result, error=f"timm cannot be imported: {err}")
        model = timm.create_model(name, pretrained=False, img_size=size, num_classes=0).to(dev, bf16).eval()
        x = torch.randn(1, 3, size, size, device=dev, dtype=bf16)
        with torch.no_grad():
            ms = time_ms(torch, lambda: model.forward_features(x), iterations)
        result["models"].append({"name": name, "size": size, "ms": ms})
        del model, x
        torch.cuda.empty_cache()
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object (for bench-cuda.ts)")
    ap.add_argument("--spec", help='shapes as JSON {"gemm": [[M, N, K], ...], "attention": [[T, H, D], ...]}')
    ap.add_argument("--iterations", type=int, default=50)
    args = ap.parse_args()
    spec = json.loads(args.spec) if args.spec else default_spec()
    result = run(spec, max(1, args.iterations))
    if args.json:
        print(json.dumps(result))
        return
    if "error" in result:
        print(f"bench_torch_cuda: {result['error']}")
        return
    print(f"PyTorch {result['torch']} on {result['device']}, median of {args.iterations} runs")
    for g in result["gemm"]:
        tflops = 2 * g["M"] * g["N"] * g["K"] / g["ms"] / 1e9
        print(f"  F.linear  M={g['M']:5d} N={g['N']:5d} K={g['K']:5d}  {g['ms']:8.4f} ms  {tflops:6.1f} TFLOP/s")
    for a in result["attention"]:
        tflops = 4 * a["T"] ** 2 * a["H"] * a["D"] / a["ms"] / 1e9
        others = "  ".join(f"{k} {v:.4f}" for k, v in a["backends"].items())
        print(f"  sdpa      T={a['T']:5d} H={a['H']:3d} D={a['D']:4d}  {a['ms']:8.4f} ms  {tflops:6.1f} TFLOP/s  ({others})")


if __name__ == "__main__":
    sys.exit(main())
