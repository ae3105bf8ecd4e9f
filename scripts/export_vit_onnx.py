#!/usr/bin/python3
"""Export a step-seg ViT backbone (safetensors, timm key names) to ONNX, and optionally run or time it
in PyTorch: the peer side of scripts/bench-cpu.ts.

The network is timm's VisionTransformer.forward_features in plain torch (step_common.py; no timm needed):
patch conv (P x P, stride P, bias) -> [class token] + patches -> + pos_embed -> depth pre-LN blocks
(x += proj(attn(norm1(x))); x += fc2(gelu_erf(fc1(norm2(x))))) -> final LayerNorm. Input (1, 3, H, W)
float32, output (1, T, C) final-norm tokens. The config comes from the safetensors
__metadata__.config (lib/config.ts schema), or from --config (a model directory's config.json).
img_size must equal H x W, unless --resample: then pos_embed is resampled to the (H / P, W / P) grid
once, at export, as the engine and timm's resample_abs_pos_embed do (bicubic, antialiased), and the
graph holds the resampled table. --head adds the linear segmentation head (decoder.head) as a second
output, (1, T, K) logits; exit heads and a merge policy in the file are ignored.

Usage (Debian's torch, with libopenblas0-pthread installed; not the pyenv python3 on PATH):
  /usr/bin/python3 scripts/export_vit_onnx.py model.safetensors out.onnx H W \
      [--threads 2] [--input x.f32 --output y.f32] [--time N] [--warmup 1] [--opset 17]
      [--config config.json] [--resample] [--head]
  --input/--output: run torch on raw little-endian float32 pixels (1*3*H*W) and write the tokens.
  --time N: time N runs after --warmup runs; prints one JSON line {"torch_ms": median, "runs_ms": [...]}.
  out.onnx may be "-" to skip the export.
Standalone random weights (the bench makes its own in TypeScript):
  /usr/bin/python3 scripts/export_vit_onnx.py --random vit-s H W model.safetensors
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn

sys.dont_write_bytecode = True  # no scripts/__pycache__ in the working tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_common import VisionTransformer, read_safetensors, resample_pos_embed, vit_kwargs, write_safetensors  # noqa: E402


class Segmenter(nn.Module):
    """The ViT and the linear segmentation head (decoder.head) on every token: (tokens, logits)."""

    def __init__(self, vit, dim, classes):
        super().__init__()
        self.vit = vit
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        tokens = self.vit(x)
        return tokens, self.head(tokens)


def config_of(meta):
    if "config" not in meta:
        sys.exit("error: the safetensors file has no __metadata__.config")
    c = json.loads(meta["config"])
    img = c["img_size"]
    img = [img, img] if isinstance(img, int) else list(img)
    for key, want in (("reg_tokens", 0), ("init_values", None), ("pre_norm", False), ("no_embed_class", False)):
        if c.get(key, want) != want:
            sys.exit(f"error: config {key}={c[key]!r} is not supported by this export (expected {want!r})")
    return c, img


def build(c, img):
    """step_common's ViT (softmax written out, not fused: the graph is the same on PyTorch 1.x and 2.x)."""
    return VisionTransformer(**vit_kwargs(c, img))


ARCHS = {"vit-s": (384, 6), "vit-b": (768, 12)}


def make_random(arch, H, W, path, seed=0):
    dim, heads = ARCHS[arch]
    cfg = {"arch": "timm.VisionTransformer", "img_size": [H, W], "patch_size": 16, "embed_dim": dim, "depth": 12,
           "num_heads": heads, "mlp_ratio": 4.0, "qkv_bias": True, "class_token": True, "norm_eps": 1e-6}
    torch.manual_seed(seed)
    model = build(cfg, [H, W])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("norm") or ".norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.02 * torch.randn_like(p))
            else:
                p.copy_(0.02 * torch.randn_like(p))
    write_safetensors(path, model.state_dict(), {"config": json.dumps(cfg)})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--random", metavar="ARCH", choices=sorted(ARCHS), help="write random weights instead: --random vit-s H W out.safetensors")
    ap.add_argument("args", nargs="+")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's own)")
    ap.add_argument("--input", help="raw float32 pixels (1*3*H*W) to run through torch")
    ap.add_argument("--output", help="where to write the torch tokens of --input, raw float32 (1*T*C)")
    ap.add_argument("--time", type=int, default=0, metavar="N", help="time N torch runs; prints a JSON line")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--config", help="the model's config.json (default: the file's __metadata__.config)")
    ap.add_argument("--resample", action="store_true", help="resample pos_embed to H x W when img_size differs")
    ap.add_argument("--head", action="store_true", help="add the segmentation head's logits as a second output")
    a = ap.parse_args()

    if a.random:
        H, W, path = int(a.args[0]), int(a.args[1]), a.args[2]
        make_random(a.random, H, W, path)
        return
    if len(a.args) != 4:
        ap.error("expected: model.safetensors out.onnx H W")
    weights_path, onnx_path, H, W = a.args[0], a.args[1], int(a.args[2]), int(a.args[3])
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    tensors, meta = read_safetensors(weights_path)
    if a.config:
        with open(a.config, encoding="utf8") as f:
            meta = {"config": f.read()}
    c, img = config_of(meta)
    if img != [H, W]:
        if not a.resample:
            sys.exit(f"error: config img_size {img} differs from the input size {[H, W]}: --resample resamples pos_embed")
        P, prefix = c["patch_size"], (1 if c.get("class_token", True) else 0)
        tensors["pos_embed"] = resample_pos_embed(tensors["pos_embed"].float(), prefix, (img[0] // P, img[1] // P), (H // P, W // P))
        img = [H, W]
    vit = build(c, img)
    skipped = ("head.", "fc_norm.", "decoder.", "exit_heads.", "policy.")
    vit.load_state_dict({k: v.float() for k, v in tensors.items() if not k.startswith(skipped)}, strict=True)
    model, outputs = vit.eval(), ["tokens"]
    if a.head:
        w, b = tensors["decoder.head.weight"], tensors["decoder.head.bias"]
        model = Segmenter(vit, c["embed_dim"], w.shape[0]).eval()
        model.head.load_state_dict({"weight": w.float(), "bias": b.float()})
        outputs.append("logits")

    x = torch.zeros(1, 3, H, W)
    if a.input:
        x = torch.from_numpy(np.fromfile(a.input, dtype="<f4").reshape(1, 3, H, W).copy())
    if onnx_path != "-":
        with torch.no_grad():
            torch.onnx.export(model, (x,), onnx_path, input_names=["pixels"], output_names=outputs,
                              opset_version=a.opset, do_constant_folding=True)
    with torch.inference_mode():
        if a.output:
            y = model(x)
            (y[0] if a.head else y).numpy().astype("<f4").tofile(a.output)
        if a.time > 0:
            for _ in range(a.warmup):
                model(x)
            runs = []
            for _ in range(a.time):
                t0 = time.perf_counter()
                model(x)
                runs.append((time.perf_counter() - t0) * 1e3)
            print(json.dumps({"torch_ms": statistics.median(runs), "runs_ms": runs, "threads": torch.get_num_threads(),
                              "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
