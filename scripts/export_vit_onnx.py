#!/usr/bin/python3
"""Export a step-seg ViT backbone (safetensors, timm key names) to ONNX, and optionally run or time it
in PyTorch: the peer side of scripts/bench-cpu.ts.

The network is timm's VisionTransformer.forward_features written out in plain torch (no timm needed):
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
import statistics
import struct
import sys
import time

import numpy as np
import torch
from torch import nn

# safetensors dtype <-> numpy. BF16 has no numpy type: it is read as uint16 and widened.
_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


def read_safetensors(path):
    """Returns ({name: float32 ndarray}, metadata dict)."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n].decode("utf8"))
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    tensors = {}
    for name, t in header.items():
        begin, end = t["data_offsets"]
        a = np.frombuffer(blob, dtype=_DTYPES[t["dtype"]], count=(end - begin) // np.dtype(_DTYPES[t["dtype"]]).itemsize, offset=base + begin)
        if t["dtype"] == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = a.astype(np.float32).reshape(t["shape"])
    return tensors, meta


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: float32 ndarray} as F32 safetensors, data section 8-byte aligned."""
    header, parts, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, a in tensors.items():
        b = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        parts.append(b)
        offset += len(b)
    js = json.dumps(header).encode("utf8")
    js += b" " * ((8 - len(js) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(js)))
        f.write(js)
        for b in parts:
            f.write(b)


class Attention(nn.Module):
    def __init__(self, dim, heads, qkv_bias):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):  # (B, T, C)
        B, T, C = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, T, D)
        q, k, v = qkv.unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, T, T)
        x = (attn @ v).transpose(1, 2).reshape(B, T, C)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, hidden, qkv_bias, eps):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch, bias=True)

    def forward(self, x):  # (B, 3, H, W) -> (B, gh*gw, C)
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """timm.models.vision_transformer.VisionTransformer, forward_features only, for the configs
    the bench uses: class token, no register tokens, no layer scale, no pre-norm."""

    def __init__(self, img_size, patch, dim, depth, heads, mlp_ratio=4.0, qkv_bias=True, class_token=True, eps=1e-6):
        super().__init__()
        gh, gw = img_size[0] // patch, img_size[1] // patch
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, (1 if class_token else 0) + gh * gw, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, int(dim * mlp_ratio), qkv_bias, eps) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x):
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        return self.norm(self.blocks(x))


class Segmenter(nn.Module):
    """The ViT and the linear segmentation head (decoder.head) on every token: (tokens, logits)."""

    def __init__(self, vit, dim, classes):
        super().__init__()
        self.vit = vit
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        tokens = self.vit(x)
        return tokens, self.head(tokens)


def resample_pos_embed(pos, prefix, src, dst):
    """(1, prefix + sh*sw, C) -> (1, prefix + dh*dw, C): timm's resample_abs_pos_embed (bicubic,
    antialias, align_corners False), which the engine's pos_resample reproduces."""
    (sh, sw), (dh, dw) = src, dst
    C = pos.shape[-1]
    grid = torch.from_numpy(pos[:, prefix:].reshape(1, sh, sw, C).copy()).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(dh, dw), mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, dh * dw, C).numpy()
    return np.concatenate([pos[:, :prefix], grid], axis=1)


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
    return VisionTransformer(img, c["patch_size"], c["embed_dim"], c["depth"], c["num_heads"], c.get("mlp_ratio", 4.0),
                             c.get("qkv_bias", True), c.get("class_token", True), c.get("norm_eps", 1e-6))


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
    write_safetensors(path, {k: v.numpy() for k, v in model.state_dict().items()}, {"config": json.dumps(cfg)})


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
        tensors["pos_embed"] = resample_pos_embed(tensors["pos_embed"], prefix, (img[0] // P, img[1] // P), (H // P, W // P))
        img = [H, W]
    vit = build(c, img)
    skipped = ("head.", "fc_norm.", "decoder.", "exit_heads.", "policy.")
    vit.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in tensors.items() if not k.startswith(skipped)}, strict=True)
    model, outputs = vit.eval(), ["tokens"]
    if a.head:
        w, b = tensors["decoder.head.weight"], tensors["decoder.head.bias"]
        model = Segmenter(vit, c["embed_dim"], w.shape[0]).eval()
        model.head.load_state_dict({"weight": torch.from_numpy(w.copy()), "bias": torch.from_numpy(b.copy())})
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
