#!/usr/bin/env python3
"""make_fixtures.py: extra reference fixtures for the ViT engine, beside the timm ones in shared/fixtures.

Each fixture is a directory under test/fixtures/ with config.json (lib/config.ts schema),
model.safetensors (timm key names) and io.safetensors (input_nchw_f32, the intermediate activations
patch_embed / tokens_0 / block_N, and final_norm [T, C]; rows: prefix tokens, then patches row-major).

  vit-noclass   no prefix tokens; weights stored as BF16
  vit-regs      class token + 2 register tokens, no_embed_class, layer scale, no qkv bias; weights F16
  vit-resample  class token, trained on a 4x4 grid, run on a 6x5 grid (position embeddings resampled
                as timm's resample_abs_pos_embed does); also pos_src / pos_dst_down / pos_dst_up,
                (h, w, C) tensors that test the resampling op on its own

The reference is a re-implementation of timm's VisionTransformer.forward_features (step_common.py;
timm is not a dependency here), computed in float64 from the stored weights exactly as rounded to
their storage dtype, and written as float32. The timm semantics it follows (vision_transformer.py, timm 1.0):
  _pos_embed: no_embed_class -> x = x + pos_embed, then cat([cls, reg..., x]);
              otherwise     -> x = cat([cls, reg..., x]), then x = x + pos_embed.
  resample_abs_pos_embed: prefix entries untouched; the patch part as a (1, C, gh, gw) grid through
              F.interpolate(size=(gh', gw'), mode='bicubic', antialias=True, align_corners=False).
  Block:      x = x + ls1(attn(norm1(x))); x = x + ls2(mlp(norm2(x))); LayerScale is x * gamma.
  Attention:  qkv(x).reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4); softmax(q k^T * D**-0.5) v;
              transpose(1, 2).reshape(B, N, C); proj.
  Mlp:        fc2(GELU(fc1(x))) with exact (erf) GELU; LayerNorm eps 1e-6.

Run with Debian's Python (torch 1.13 + numpy; no timm needed):
  /usr/bin/python3 scripts/make_fixtures.py [--out test/fixtures] [--check]
--check also verifies the resampling against PIL's float ('F' mode) bicubic resize when PIL is
installed (PIL's filter is the one PyTorch's antialias path reproduces).
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch

sys.dont_write_bytecode = True  # no scripts/__pycache__ in the working tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_common import (IMAGENET_MEAN, IMAGENET_STD, VisionTransformer, decode, encode,  # noqa: E402
                         read_safetensors, resample_pos_grid, vit_kwargs, write_safetensors)


def stored(t, dtype):
    """t as `dtype` stores it (rounded to nearest even), back in float64."""
    return decode(encode(t, dtype), dtype, t.shape).to(torch.float64)


def load_safetensors(path):
    """-> {name: float64 torch tensor}."""
    return {k: v.to(torch.float64) for k, v in read_safetensors(path)[0].items()}


# ---------------------------------------------------------------------------------------------------
# Weights: random, scaled so activations stay O(1) through the blocks.


def make_weights(cfg, gen):
    C, P, depth = cfg["embed_dim"], cfg["patch_size"], cfg["depth"]
    hidden = int(round(C * cfg["mlp_ratio"]))
    gh, gw = cfg["img_size"][0] // P, cfg["img_size"][1] // P
    prefix = (1 if cfg["class_token"] else 0) + cfg["reg_tokens"]
    pos_len = (0 if cfg["no_embed_class"] else prefix) + gh * gw

    def randn(*shape, std=1.0, mean=0.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * std + mean

    w = {}
    w["patch_embed.proj.weight"] = randn(C, 3, P, P, std=1.0 / math.sqrt(3 * P * P))
    w["patch_embed.proj.bias"] = randn(C, std=0.1)
    if cfg["class_token"]:
        w["cls_token"] = randn(1, 1, C, std=0.5)
    if cfg["reg_tokens"]:
        w["reg_token"] = randn(1, cfg["reg_tokens"], C, std=0.5)
    # Plain noise: the hardest case for resampling, every filter tap matters.
    w["pos_embed"] = randn(1, pos_len, C, std=0.5)
    for i in range(depth):
        b = f"blocks.{i}."
        w[b + "norm1.weight"] = randn(C, std=0.1, mean=1.0)
        w[b + "norm1.bias"] = randn(C, std=0.1)
        w[b + "attn.qkv.weight"] = randn(3 * C, C, std=1.0 / math.sqrt(C))
        if cfg["qkv_bias"]:
            w[b + "attn.qkv.bias"] = randn(3 * C, std=0.1)
        w[b + "attn.proj.weight"] = randn(C, C, std=1.0 / math.sqrt(C))
        w[b + "attn.proj.bias"] = randn(C, std=0.1)
        if cfg["init_values"] is not None:
            w[b + "ls1.gamma"] = randn(C, std=0.03, mean=cfg["init_values"])
        w[b + "norm2.weight"] = randn(C, std=0.1, mean=1.0)
        w[b + "norm2.bias"] = randn(C, std=0.1)
        w[b + "mlp.fc1.weight"] = randn(hidden, C, std=1.0 / math.sqrt(C))
        w[b + "mlp.fc1.bias"] = randn(hidden, std=0.1)
        w[b + "mlp.fc2.weight"] = randn(C, hidden, std=1.0 / math.sqrt(hidden))
        w[b + "mlp.fc2.bias"] = randn(C, std=0.1)
        if cfg["init_values"] is not None:
            w[b + "ls2.gamma"] = randn(C, std=0.03, mean=cfg["init_values"])
    w["norm.weight"] = randn(C, std=0.1, mean=1.0)
    w["norm.bias"] = randn(C, std=0.1)
    return w


# ---------------------------------------------------------------------------------------------------
# Reference forward (float64): step_common's VisionTransformer, which follows timm's vision_transformer.py.


def resample_pos(grid_hwc, new_h, new_w):
    """(h, w, C) -> (new_h, new_w, C): the patch part of timm's resample_abs_pos_embed."""
    return resample_pos_grid(grid_hwc[None], new_h, new_w)[0]


@torch.no_grad()
def forward_features(cfg, w, x):
    """x: (1, 3, H, W) float64 -> dict of activations (rows x C, batch dim dropped)."""
    vit = VisionTransformer(**vit_kwargs(cfg), dynamic_img_size=True).double()
    vit.load_state_dict(w, strict=True)
    acts = {}
    acts["final_norm"] = vit.forward_features(x, acts)
    return {k: v[0] for k, v in acts.items()}


# ---------------------------------------------------------------------------------------------------
# Fixtures.


def base_config(**kw):
    cfg = {
        "arch": "timm.VisionTransformer",
        "img_size": None,
        "patch_size": 16,
        "embed_dim": None,
        "depth": 2,
        "num_heads": None,
        "mlp_ratio": 4.0,
        "qkv_bias": True,
        "class_token": True,
        "reg_tokens": 0,
        "no_embed_class": False,
        "init_values": None,
        "norm_eps": 1e-6,
        "act": "gelu_erf",
        "pixel_mean": IMAGENET_MEAN,
        "pixel_std": IMAGENET_STD,
    }
    cfg.update(kw)
    return cfg


def write_fixture(out_dir, name, cfg, weight_dtype, input_hw, seed, note, extra_io=None):
    gen = torch.Generator().manual_seed(seed)
    w = make_weights(cfg, gen)
    st, wq = {}, {}
    for k, t in w.items():
        # Every weight goes through float32 first, so F32 / F16 / BF16 fixtures share one rounding path.
        t32 = t.to(torch.float32).to(torch.float64)
        st[k] = (weight_dtype, t32)
        wq[k] = stored(t32, weight_dtype)
    x = torch.randn(1, 3, *input_hw, generator=gen, dtype=torch.float64).to(torch.float32).to(torch.float64)
    acts = forward_features(cfg, wq, x)

    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    cfg_out = dict(cfg, num_prefix_tokens=(1 if cfg["class_token"] else 0) + cfg["reg_tokens"], note=note)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg_out, f, indent=1)
        f.write("\n")
    write_safetensors(os.path.join(d, "model.safetensors"), st)
    io = {"input_nchw_f32": x}
    io.update(acts)
    if extra_io:
        io.update(extra_io)
    write_safetensors(os.path.join(d, "io.safetensors"), io, dtype="F32")
    return d, wq, x, acts


def pil_resample(grid_hwc, new_h, new_w):
    """Independent check: PIL's 'F'-mode BICUBIC resize, channel by channel."""
    from PIL import Image

    h, w, C = grid_hwc.shape
    out = np.empty((new_h, new_w, C))
    for c in range(C):
        im = Image.fromarray(grid_hwc[:, :, c].numpy().astype(np.float32), mode="F")
        out[:, :, c] = np.asarray(im.resize((new_w, new_h), Image.BICUBIC), dtype=np.float64)
    return torch.from_numpy(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "test", "fixtures"))
    ap.add_argument("--check", action="store_true", help="re-read the files and cross-check against PIL")
    args = ap.parse_args()
    out = os.path.normpath(args.out)
    made = []

    # 1. No prefix tokens: pos_embed [1, gh * gw, C]; BF16 weights.
    cfg = base_config(img_size=[64, 96], embed_dim=64, num_heads=2, class_token=False)
    made.append(write_fixture(out, "vit-noclass", cfg, "BF16", (64, 96), 1001,
                              "no prefix tokens; weights stored as BF16, outputs computed in float64 from the "
                              "BF16 values and stored as float32; token order: patches row-major"))

    # 2. Class + 2 register tokens, no_embed_class, layer scale, no qkv bias; F16 weights.
    cfg = base_config(img_size=[48, 48], embed_dim=48, num_heads=3, reg_tokens=2, no_embed_class=True,
                      init_values=0.1, qkv_bias=False)
    made.append(write_fixture(out, "vit-regs", cfg, "F16", (48, 48), 2002,
                              "class + 2 register tokens without position embedding (no_embed_class), layer "
                              "scale, no qkv bias; weights stored as F16, outputs computed in float64 from the "
                              "F16 values; token order: cls, reg0, reg1, then patches row-major"))

    # 3. Trained on 4x4, run on 6x5: position embeddings resampled; plus the op on its own.
    gen = torch.Generator().manual_seed(3003)
    C = 64
    pos_src = torch.randn(7, 9, C, generator=gen, dtype=torch.float64).to(torch.float32).to(torch.float64)
    extra = {
        "pos_src": pos_src,
        "pos_dst_down": resample_pos(pos_src, 3, 4),
        "pos_dst_up": resample_pos(pos_src, 12, 17),
    }
    cfg = base_config(img_size=[64, 64], embed_dim=C, num_heads=2)
    made.append(write_fixture(out, "vit-resample", cfg, "F32", (96, 80), 3004,
                              "trained grid 4x4, input 96x80 (6x5 grid): the patch part of pos_embed is "
                              "resampled with F.interpolate(bicubic, antialias=True, align_corners=False) as "
                              "timm's resample_abs_pos_embed does; io also holds pos_src (7, 9, C) and its "
                              "resamplings pos_dst_down (3, 4, C) and pos_dst_up (12, 17, C), (h, w, C) layout",
                              extra_io=extra))

    total = 0
    for d, wq, x, acts in made:
        for f in sorted(os.listdir(d)):
            n = os.path.getsize(os.path.join(d, f))
            total += n
            print(f"{os.path.relpath(os.path.join(d, f), out):40s} {n:8d} bytes")
        fn = acts["final_norm"]
        print(f"  final_norm {tuple(fn.shape)} mean {fn.mean():.3f} std {fn.std():.3f}; "
              f"block outputs std " + ", ".join(f"{acts[k].std():.3f}" for k in acts if k.startswith("block_")))
    print(f"total {total} bytes")

    if args.check:
        for d, wq, x, acts in made:
            w2 = load_safetensors(os.path.join(d, "model.safetensors"))
            io2 = load_safetensors(os.path.join(d, "io.safetensors"))
            assert set(w2) == set(wq), d
            for k in wq:
                assert torch.equal(w2[k], wq[k]), (d, k)
            cfg2 = json.load(open(os.path.join(d, "config.json")))
            again = forward_features(cfg2, w2, io2["input_nchw_f32"])
            err = (again["final_norm"] - io2["final_norm"]).norm() / io2["final_norm"].norm()
            print(f"{os.path.basename(d)}: re-read forward vs stored final_norm rel err {err:.2e}")
        io2 = load_safetensors(os.path.join(out, "vit-resample", "io.safetensors"))
        try:
            for key, (h, w_) in (("pos_dst_down", (3, 4)), ("pos_dst_up", (12, 17))):
                ref = pil_resample(io2["pos_src"], h, w_)
                err = (ref - io2[key]).norm() / io2[key].norm()
                print(f"{key}: torch vs PIL rel err {err:.2e}")
        except ImportError:
            print("PIL not installed: resampling cross-check skipped")


if __name__ == "__main__":
    main()
