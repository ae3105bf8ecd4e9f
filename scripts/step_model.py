#!/usr/bin/env python3
"""step_model.py: the PyTorch side of step-seg's model: StepSeg and a forward that reproduces the engine
(native/core/model.cpp, merge.cpp, cpu/token_merge.cpp, token_compact.cpp); safetensors I/O and the
ViT itself are step_common.py's.

StepSeg is timm's VisionTransformer (step_common.VisionTransformer, its key names exactly:
patch_embed.proj, cls_token, pos_embed, blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2},
norm; a class token, no register tokens, no layer scale, no pre-norm) plus what step-seg adds:
  decoder.head                    Linear(C, K) over the final-norm tokens
  exit_heads.<layer>.{norm,head}  LayerNorm + Linear(C, K) after block <layer> (1-based count)
  policy.trunk.*                  timm efficientnet_lite0 (features_only) with BatchNorm running stats
  policy.heads.<S>                Linear(320, O) per window side S: O = 1 sigmoid, O = 2 softmax (1 = merge)
The config is the engine's (lib/config.ts): timm field names plus class_names, palette, input_size,
decoder, merge {policy, levels, thresholds, color_tau, texture_tau, head_outputs}, prune {exit_layers,
threshold, keep_top_k}.

Two forwards:
  forward_train(x, policy_x, token_maps=None)  batched, differentiable: final and exit logits on the
      patch grid (B, K, gh, gw) for deep supervision and the policy's window logits per level. With
      token_maps it runs superpatch tokens (images padded to the longest token list, padding masked
      out of attention) and unshares their logits to the grid.
  infer(rgb, merge, prune)  one image as the engine runs it: window scores (similarity scorer or the
      learned policy), superpatch selection, area-downsampled superpatch embedding plus the mean of the
      covered position embeddings, exits that halt confident tokens (top-k context per class, ties to
      the lower row; with prune.agree only tokens whose bordering patches carry their label) and remove
      them from attention, final head, unsharing (merge.unshare: 'copy' or 'blend'). The defaults are
      the engine's (lib/config.ts): unshare 'blend', agree true.

Runs on Debian's torch 1.13 (CPU) and on PyTorch 2.x; numpy 1.x or 2.x; no timm.
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from step_common import IMAGENET_MEAN, IMAGENET_STD, VisionTransformer, read_safetensors, resample_pos_embed, vit_kwargs

CAMVID_CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car", "pedestrian",
                  "bicyclist"]
CAMVID_PALETTE = [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
                  [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192]]
CAMVID_VOID = 11

# ---------------------------------------------------------------------------------------------------
# Config (the engine's schema, lib/config.ts)


def make_config(embed_dim=192, depth=12, num_heads=3, img_size=(512, 512), patch_size=16, class_names=None,
                palette=None, input_size=None, exit_layers=(), prune_threshold=0.95, keep_top_k=5,
                merge_policy="similarity", merge_levels=(8, 4, 2), merge_thresholds=None, head_outputs=1,
                color_tau=16.0, texture_tau=32.0, **extra):
    class_names = list(class_names if class_names is not None else CAMVID_CLASSES)
    cfg = {
        "arch": "timm.VisionTransformer", "img_size": [int(img_size[0]), int(img_size[1])],
        "patch_size": patch_size, "embed_dim": embed_dim, "depth": depth, "num_heads": num_heads,
        "mlp_ratio": 4, "qkv_bias": True, "class_token": True, "reg_tokens": 0, "no_embed_class": False,
        "pre_norm": False, "init_values": None, "norm_eps": 1e-6, "act": "gelu_erf",
        "pixel_mean": list(IMAGENET_MEAN), "pixel_std": list(IMAGENET_STD),
        "class_names": class_names, "num_classes": len(class_names),
        "palette": palette if palette is not None else (CAMVID_PALETTE if class_names == CAMVID_CLASSES else None),
        "input_size": int(input_size or max(img_size)), "decoder": {"type": "linear"},
    }
    if cfg["palette"] is None:
        del cfg["palette"]
    levels = [int(s) for s in merge_levels]
    if merge_policy:
        thresholds = list(merge_thresholds) if merge_thresholds is not None else (
            [0.8, 0.7, 0.6][:len(levels)] if merge_policy == "similarity" else [0.9, 0.8, 0.7][:len(levels)])
        cfg["merge"] = {"policy": merge_policy, "levels": levels, "thresholds": thresholds,
                        "color_tau": color_tau, "texture_tau": texture_tau}
        if merge_policy == "learned":
            cfg["merge"]["head_outputs"] = head_outputs
    else:
        cfg["merge"] = False
    if exit_layers:
        cfg["prune"] = {"exit_layers": [int(l) for l in exit_layers], "threshold": prune_threshold,
                        "keep_top_k": keep_top_k}
    cfg.update(extra)
    return cfg


def policy_levels(cfg):
    m = cfg.get("merge")
    return [int(s) for s in m["levels"]] if m and m.get("policy") == "learned" else []


# ---------------------------------------------------------------------------------------------------
# EfficientNet-Lite0 trunk, timm names (efficientnet_lite0, features_only; see native/core/effnet.cpp)

# (repeats, kernel, stride, out channels, expansion) per stage: timm's arch strings ds_r1_k3_s1_e1_c16,
# ir_r2_k3_s2_e6_c24, ir_r2_k5_s2_e6_c40, ir_r3_k3_s2_e6_c80, ir_r3_k5_s1_e6_c112, ir_r4_k5_s2_e6_c192,
# ir_r1_k3_s1_e6_c320.
EFFNET_STAGES = [(1, 3, 1, 16, 1), (2, 3, 2, 24, 6), (2, 5, 2, 40, 6), (3, 3, 2, 80, 6), (3, 5, 1, 112, 6),
                 (4, 5, 2, 192, 6), (1, 3, 1, 320, 6)]
EFFNET_FEATURE_STAGES = (0, 1, 2, 4, 6)  # strides 2, 4, 8, 16, 32


class DepthwiseSeparable(nn.Module):
    def __init__(self, cin, cout, k, stride):
        super().__init__()
        self.conv_dw = nn.Conv2d(cin, cin, k, stride, (k - 1) // 2, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv_pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        y = F.relu6(self.bn1(self.conv_dw(x)))
        y = self.bn2(self.conv_pw(y))  # no activation after the projection
        return y + x if self.skip else y


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, k, stride, expand):
        super().__init__()
        mid = cin * expand
        self.conv_pw = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv_dw = nn.Conv2d(mid, mid, k, stride, (k - 1) // 2, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv_pwl = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        y = F.relu6(self.bn1(self.conv_pw(x)))
        y = F.relu6(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(y))
        return y + x if self.skip else y


class EfficientNetLite0(nn.Module):
    """timm efficientnet_lite0 with features_only: forward -> the last feature map (the stride-32 map
    (B, 320, ceil(H/32), ...) of the full trunk), or all its feature maps with all_features=True. With
    features < 5 the trunk is truncated: it holds and runs the stages up to feature map features - 1 (the
    engine's EffNetConfig::features). Padding is symmetric (k - 1) / 2, as timm's non-tf_ models
    (PyTorch padding)."""

    def __init__(self, features=5):
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        stages, cin = [], 32
        last_stage = EFFNET_FEATURE_STAGES[features - 1]
        for s, (repeats, k, stride, cout, expand) in enumerate(EFFNET_STAGES[:last_stage + 1]):
            blocks = []
            for r in range(repeats):
                st = stride if r == 0 else 1
                blocks.append(DepthwiseSeparable(cin, cout, k, st) if s == 0 else InvertedResidual(cin, cout, k, st, expand))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        for m in self.modules():  # timm's _init_weight_goog for convolutions
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))

    def forward(self, x, all_features=False):
        x = F.relu6(self.bn1(self.conv_stem(x)))
        feats = []
        for s, stage in enumerate(self.blocks):
            x = stage(x)
            if s in EFFNET_FEATURE_STAGES:
                feats.append(x)
        return feats if all_features else x


EFFNET_FEATURE_CHANNELS = (16, 24, 40, 112, 320)


class MergePolicy(nn.Module):
    """The learned scorer: the input average-pooled by `pool`, the trunk up to feature map `feature`
    (stride 2^(feature+1), so a cell covers cell = pool * 2^(feature+1) image pixels: 32 for the full trunk
    at full size), and one head per window side S over that map average-pooled to the window grid
    (S * P / cell cells per window side)."""

    def __init__(self, levels, outputs=1, patch=16, pool=1, feature=4):
        super().__init__()
        self.levels, self.outputs, self.patch = [int(s) for s in levels], int(outputs), patch
        self.pool, self.feature = int(pool), int(feature)
        self.cell = self.pool * 2 ** (self.feature + 1)
        self.trunk = EfficientNetLite0(self.feature + 1)
        C = EFFNET_FEATURE_CHANNELS[self.feature]
        self.heads = nn.ModuleDict({str(s): nn.Linear(C, outputs) for s in self.levels})
        for h in self.heads.values():
            nn.init.normal_(h.weight, 0, 0.01)
            nn.init.zeros_(h.bias)

    def forward(self, x, gh, gw):
        """x: (B, 3, H, W) normalised with mean = std = 127.5, zero-padded to (gh * P, gw * P).
        -> {S: (B, O, gh // S, gw // S) head logits}."""
        if self.pool > 1:
            x = F.avg_pool2d(x, self.pool)
        top = self.trunk(x)  # (B, C, ceil(H / cell), ceil(W / cell))
        out = {}
        for s in self.levels:
            f, wh, ww = s * self.patch // self.cell, gh // s, gw // s
            assert f * self.cell == s * self.patch, f"window sides must be multiples of {self.cell} px"
            if wh == 0 or ww == 0:
                out[s] = top.new_zeros(top.shape[0], self.outputs, wh, ww)
                continue
            pooled = F.avg_pool2d(top[:, :, :wh * f, :ww * f], f)  # (B, C, wh, ww)
            out[s] = self.heads[str(s)](pooled.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return out

    def merge_prob(self, logits):
        """head logits (B, O, wh, ww) -> p(merge) (B, wh, ww), as the engine: sigmoid(l) or softmax[1]
        = sigmoid(l1 - l0)."""
        return torch.sigmoid(logits[:, 0] if self.outputs == 1 else logits[:, 1] - logits[:, 0])


# ---------------------------------------------------------------------------------------------------
# StepSeg: the ViT (step_common.VisionTransformer, timm names) and step-seg's heads


class ExitHead(nn.Module):
    def __init__(self, dim, classes, eps):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.norm(x))


class Decoder(nn.Module):
    def __init__(self, dim, classes):
        super().__init__()
        self.head = nn.Linear(dim, classes)


class StepSeg(VisionTransformer):
    def __init__(self, cfg):
        assert cfg.get("class_token", True) and not cfg.get("reg_tokens", 0) and not cfg.get("no_embed_class", False)
        assert not cfg.get("pre_norm", False) and cfg.get("init_values") is None
        super().__init__(**vit_kwargs(cfg), fused_attention=True, dynamic_img_size=True)
        self.cfg = cfg
        C, K, eps = self.C, cfg["num_classes"], cfg.get("norm_eps", 1e-6)
        self.K = K
        self.decoder = Decoder(C, K)
        prune = cfg.get("prune") or {}
        self.exit_layers = [int(l) for l in prune.get("exit_layers", [])]
        self.exit_heads = nn.ModuleDict({str(l): ExitHead(C, K, eps) for l in self.exit_layers})
        levels = policy_levels(cfg)
        m = cfg.get("merge") or {}
        self.policy = (MergePolicy(levels, m.get("head_outputs", 1), self.P, m.get("policy_pool", 1), m.get("policy_feature", 4))
                       if levels else None)
        self._init_weights()

    def _init_weights(self):
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for name, m in self.named_modules():
            if name.startswith("policy"):
                continue
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- weights -------------------------------------------------------------------------------------

    def engine_state_dict(self):
        """The state dict under the engine's names: no BatchNorm step counters."""
        return {k: v for k, v in self.state_dict().items() if not k.endswith("num_batches_tracked")}

    def load_engine_weights(self, tensors, strict=True):
        """Loads tensors named as the engine names them (safetensors contents); BatchNorm counters are
        not stored there, so they are left as they are."""
        own = self.state_dict()
        missing = [k for k in own if k not in tensors and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in tensors if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"missing {missing[:8]}, unexpected {unexpected[:8]}")
        with torch.no_grad():
            for k, v in tensors.items():
                if k in own:
                    if tuple(own[k].shape) != tuple(v.shape):
                        raise ValueError(f"{k}: shape {tuple(v.shape)} but the model has {tuple(own[k].shape)}")
                    own[k].copy_(v.to(own[k].dtype))

    def load_deit_tiny(self, path):
        """Starts the backbone from a timm ViT checkpoint (DeiT-Tiny: embed 192, depth 12, heads 3); the
        ImageNet head is dropped and the position embeddings are resampled to this model's grid."""
        t, _ = read_safetensors(path)
        pos = t["pos_embed"].to(torch.float32)  # (1, 1 + n * n, C)
        n = int(round(math.sqrt(pos.shape[1] - 1)))
        assert n * n == pos.shape[1] - 1, "expected a square position-embedding grid"
        t["pos_embed"] = resample_pos_embed(pos, 1, (n, n), self.grid)
        backbone = {k: v for k, v in t.items() if not k.startswith(("head.", "fc_norm."))}
        own = self.state_dict()
        missing = [k for k in own if not k.startswith(("decoder.", "exit_heads.", "policy."))
                   and k not in backbone]
        if missing:
            raise KeyError(f"{path} lacks {missing[:8]}")
        self.load_engine_weights(backbone, strict=False)
        return self

    # -- building blocks ----------------------------------------------------------------------------

    def level_tokens(self, x, sizes, pos=None):
        """Embedding (patch embedding + mean position embedding) of every aligned window of every size:
        {S: (B, gh // S, gw // S, C)}. A window of S x S patches is its region area-downsampled to P x P
        pixels (each pixel the mean of an S x S block) through the same patch embedding; S = 1 is the
        ordinary patch. x: (B, 3, gh * P, gw * P) normalised; pos: (B or 1, gh, gw, C) position
        embeddings of the grid (default: the trained ones, resampled to (gh, gw) when they differ)."""
        P = self.P
        gh, gw = x.shape[2] // P, x.shape[3] // P
        pos = (self.pos_grid(gh, gw) if pos is None else pos).permute(0, 3, 1, 2)  # (B or 1, C, gh, gw)
        out = {}
        for s in sizes:
            wh, ww = gh // s, gw // s
            if wh == 0 or ww == 0:
                continue
            xs = x[:, :, :wh * s * P, :ww * s * P]
            xs = xs if s == 1 else F.avg_pool2d(xs, s)
            emb = self.patch_embed.proj(xs)  # (B, C, wh, ww)
            p = pos[:, :, :wh * s, :ww * s]
            p = p if s == 1 else F.avg_pool2d(p, s)
            out[s] = (emb + p).permute(0, 2, 3, 1)
        return out

    def prefix(self, B):
        return (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)

    # -- training forward ---------------------------------------------------------------------------

    def forward_train(self, x, policy_x=None, token_maps=None, exits=True, pos=None):
        """x: (B, 3, H, W) normalised (H, W multiples of P); policy_x: the same pixels normalised with
        mean = std = 127.5 (or None: no policy output); token_maps: None (dense) or, per image, a dict
        {"sizes": LongTensor (T,), "rows": (T,), "cols": (T,), "index": LongTensor (gh, gw)} naming each
        token's window (top-left patch, side) and the token of every patch; pos: (B, gh, gw, C) position
        embeddings per image (a crop's window of its whole image's grid) or None (the trained grid).
        -> {"logits": (B, K, gh, gw), "exits": {layer: (B, K, gh, gw)}, "policy": {S: (B, O, wh, ww)}}"""
        B, _, H, W = x.shape
        P, C = self.P, self.C
        gh, gw = H // P, W // P
        out = {"exits": {}}
        if token_maps is None:
            tok = self.level_tokens(x, [1], pos)[1].reshape(B, gh * gw, C)
            mask = None
        else:
            sizes = sorted({int(s) for m in token_maps for s in m["sizes"].tolist()})
            lv = self.level_tokens(x, sizes, pos)
            T = max(int(m["sizes"].numel()) for m in token_maps)
            tok = x.new_zeros(B, T, C)
            mask = torch.zeros(B, T + 1, dtype=torch.bool, device=x.device)
            mask[:, 0] = True
            for b, m in enumerate(token_maps):
                for s in sizes:
                    sel = (m["sizes"] == s).nonzero().flatten()
                    if sel.numel():
                        rows, cols = m["rows"][sel] // s, m["cols"][sel] // s
                        tok[b, sel.to(x.device)] = lv[s][b, rows.to(x.device), cols.to(x.device)].to(tok.dtype)
                mask[b, 1:1 + m["sizes"].numel()] = True
        h = torch.cat([self.prefix(B).to(tok.dtype), tok], 1)

        def to_grid(logits):  # (B, T, K) token logits -> (B, K, gh, gw)
            if token_maps is None:
                return logits.transpose(1, 2).reshape(B, self.K, gh, gw)
            g = torch.stack([logits[b][m["index"].to(x.device).flatten()] for b, m in enumerate(token_maps)])
            return g.transpose(1, 2).reshape(B, self.K, gh, gw)

        for i, blk in enumerate(self.blocks):
            h = blk(h, mask)
            if exits and (i + 1) in self.exit_layers:
                out["exits"][i + 1] = to_grid(self.exit_heads[str(i + 1)](h[:, 1:]))
        out["logits"] = to_grid(self.decoder.head(self.norm(h)[:, 1:]))
        if policy_x is not None and self.policy is not None:
            out["policy"] = self.policy(policy_x, gh, gw)
        return out

    # -- inference forward, as the engine -------------------------------------------------------------

    @torch.no_grad()
    def infer(self, rgb, merge=None, prune=None, return_scores=False):
        """One image as the engine segments it (no resize: rgb is already at the inference size).
        rgb: (h, w, 3) uint8 numpy. merge: None (dense) or {policy: 'similarity' | 'learned', levels,
        thresholds, color_tau, texture_tau, unshare: 'copy' | 'blend' (default 'blend')}. prune: None or
        {exit_layers, threshold, keep_top_k, agree (default True)}.
        -> {"logits": (K, gh, gw), "index": (gh * gw) int32 token of each patch, "size": (gh * gw) token
        side, "exit_layer": (gh * gw) blocks run by the patch's token, "blocked": (gh * gw) the first exit
        at which the patch's token was confident (conf >= threshold) but its neighbours disagreed (0:
        none; always 0 without agreement), "rects": [(row, col, S)], "confidences": {layer: [(conf,
        halted, class, agrees, label gap)]} per rect row (for margin checks), "scores": per level}."""
        dev, dt = self.pos_embed.device, self.pos_embed.dtype
        h, w = rgb.shape[:2]
        P, C, K = self.P, self.C, self.K
        gh, gw = -(-h // P), -(-w // P)
        img = torch.from_numpy(np.ascontiguousarray(rgb[:, :, :3])).to(dev)

        # Normalised, zero-padded input (engine: image_normalize).
        mean = torch.tensor(self.cfg.get("pixel_mean", IMAGENET_MEAN), dtype=dt, device=dev) * 255
        std = torch.tensor(self.cfg.get("pixel_std", IMAGENET_STD), dtype=dt, device=dev) * 255
        x = torch.zeros(1, 3, gh * P, gw * P, dtype=dt, device=dev)
        x[0, :, :h, :w] = ((img.to(dt) - mean) / std).permute(2, 0, 1)

        # Superpatch plan (engine: plan_merge).
        levels = [int(s) for s in merge["levels"]] if merge else []
        scores = []
        if merge and merge.get("policy", "similarity") == "learned":
            assert self.policy is not None, "this model has no learned policy"
            px = torch.zeros(1, 3, gh * P, gw * P, dtype=dt, device=dev)
            px[0, :, :h, :w] = ((img.to(dt) - 127.5) / 127.5).permute(2, 0, 1)
            saved = self.policy.levels
            self.policy.levels = levels
            logits = self.policy(px, gh, gw)
            self.policy.levels = saved
            scores = [self.policy.merge_prob(logits[s])[0].double().cpu().numpy() for s in levels]
        elif merge:
            scores = similarity_scores(rgb, P, gh, gw, levels, merge.get("color_tau", 16.0),
                                       merge.get("texture_tau", 32.0))
        rects, index = select_superpatches(gh, gw, levels, merge["thresholds"] if merge else [], scores)

        # Token list: class token, then every rect's embedding + its mean position embedding.
        Tp = len(rects)
        rt = torch.tensor(rects, dtype=torch.long, device=dev)  # (Tp, 3): row, col, S
        sizes = sorted({s for _, _, s in rects})
        lv = self.level_tokens(x, sizes)
        emb = torch.empty(Tp, C, dtype=dt, device=dev)  # (Tp, C)
        for s in sizes:
            sel = (rt[:, 2] == s).nonzero().flatten()
            emb[sel] = lv[s][0, rt[sel, 0] // s, rt[sel, 1] // s].to(dt)
        xs = torch.cat([self.prefix(1)[0].to(dt), emb], 0)  # (A, C), A = 1 + Tp at first

        # Blocks; after each exit taken, halted rows file their exit logits under their rect and leave.
        rect_of_row = torch.arange(-1, Tp, device=dev)  # (A) rect of each active row, -1: class token
        rect_logits = torch.zeros(Tp, K, dtype=dt, device=dev)  # (Tp, K)
        rect_exit = torch.full((Tp,), self.depth, dtype=torch.long, device=dev)
        rect_blocked = np.zeros(Tp, np.int64)
        exits = [int(l) for l in prune["exit_layers"]] if prune else []
        # Agreement (engine: token_halt with cell_label): the label of every patch, painted at each exit
        # by the rows still active; a halted token's patches keep the label it halted with.
        cell_label = np.zeros((gh, gw), np.int64) if prune and prune.get("agree", True) else None
        confidences = {}
        for i, blk in enumerate(self.blocks):
            xs = blk(xs[None])[0]
            if (i + 1) not in exits:
                continue
            lg = self.exit_heads[str(i + 1)](xs)  # (A, K)
            agree = None if cell_label is None else {"rects": rects, "rect_of_row": rect_of_row.cpu().numpy(),
                                                     "cell_label": cell_label}
            halt, conf = token_halt(lg, prefix=1, threshold=prune["threshold"], top_k=prune["keep_top_k"],
                                    agree=agree)
            confidences[i + 1] = conf
            for j, (c, _, _, ok, _) in enumerate(conf):  # rows 1.. are rects (prefix 1)
                t = int(rect_of_row[1 + j])
                if c >= np.float32(prune["threshold"]) and not ok and rect_blocked[t] == 0:
                    rect_blocked[t] = i + 1
            halt = torch.tensor(halt, dtype=torch.bool, device=dev)
            filed = halt & (rect_of_row >= 0)
            rect_logits[rect_of_row[filed]] = lg[filed].to(dt)
            rect_exit[rect_of_row[filed]] = i + 1
            xs, rect_of_row = xs[~halt], rect_of_row[~halt]
        lg = self.decoder.head(self.norm(xs))
        sel = rect_of_row >= 0
        rect_logits[rect_of_row[sel]] = lg[sel].to(dt)

        idx = torch.tensor(index, dtype=torch.long, device=dev)
        grid = unshare(rect_logits, rects, index, gh, gw, merge.get("unshare", "blend") if merge else "copy")
        out = {
            "logits": grid,
            "index": np.asarray(index, np.int32),
            "size": rt[idx, 2].cpu().numpy().astype(np.uint8),
            "exit_layer": rect_exit[idx].cpu().numpy().astype(np.uint8),
            "blocked": rect_blocked[np.asarray(index)].astype(np.uint8),
            "rects": rects, "confidences": confidences,
        }
        if return_scores:
            out["scores"] = scores
        return out


# ---------------------------------------------------------------------------------------------------
# The engine's merge and halting rules (ops.h), on numpy / torch.


def similarity_scores(rgb, P, gh, gw, levels, color_tau, texture_tau):
    """ops.h window_score: per patch the mean colour m_p and texture s_p (RMS over channels of the
    standard deviation, 0..255 units, valid pixels only); per window d = max_p ||m_p - m_W|| / sqrt(3),
    t = max_p s_p, score = exp(-(d / color_tau)^2) * exp(-(t / texture_tau)^2). -> [(gh//S, gw//S)]."""
    h, w = rgb.shape[:2]
    x = np.zeros((gh * P, gw * P, 3), np.float64)
    valid = np.zeros((gh * P, gw * P), np.float64)
    x[:h, :w] = rgb[:, :, :3]
    valid[:h, :w] = 1
    def per_patch(a):  # (gh * P, gw * P, ...) -> (gh, gw, ...) sums
        return a.reshape(gh, P, gw, P, *a.shape[2:]).sum(axis=(1, 3))
    n = np.maximum(per_patch(valid), 1)[..., None]
    m = per_patch(x) / n
    var = np.maximum(per_patch(x * x) / n - m * m, 0)
    tex = np.sqrt(var.sum(-1) / 3)
    out = []
    for s in levels:
        wh, ww = gh // s, gw // s
        mm = m[:wh * s, :ww * s].reshape(wh, s, ww, s, 3)
        mw = mm.mean(axis=(1, 3), keepdims=True)
        d = np.sqrt((((mm - mw) ** 2).sum(-1) / 3).max(axis=(1, 3)))
        t = tex[:wh * s, :ww * s].reshape(wh, s, ww, s).max(axis=(1, 3))
        out.append(np.exp(-(d / color_tau) ** 2) * np.exp(-(t / texture_tau) ** 2))
    return out


def select_superpatches(gh, gw, levels, thresholds, scores):
    """ops.h superpatch_select: levels in order, a window accepted when score >= threshold and none of
    its patches is taken; the rest are 1 x 1. -> (rects [(row, col, S)] in row-major order of their
    top-left patch, token index of every patch (gh * gw))."""
    owner = -np.ones(gh * gw, np.int64)
    owner_size = np.ones(gh * gw, np.int64)
    for s, thr, sc in zip(levels, thresholds, scores):
        wh, ww = gh // s, gw // s
        for wy in range(wh):
            for wx in range(ww):
                if not (np.float32(sc[wy, wx]) >= np.float32(thr)):
                    continue
                cells = [(wy * s + dy) * gw + wx * s + dx for dy in range(s) for dx in range(s)]
                if any(owner[c] >= 0 for c in cells):
                    continue
                tl = (wy * s) * gw + wx * s
                owner[cells] = tl
                owner_size[tl] = s
    rects, token_at, index = [], {}, []
    for cell in range(gh * gw):
        tl = cell if owner[cell] < 0 else int(owner[cell])
        if tl == cell:
            token_at[cell] = len(rects)
            rects.append((cell // gw, cell % gw, 1 if owner[cell] < 0 else int(owner_size[cell])))
        index.append(token_at[tl])
    return rects, index


def token_halt(logits, prefix, threshold, top_k, agree=None):
    """ops.h token_halt for one image: conf = max softmax (float32, as the engine); candidates have
    conf >= threshold; per class (argmax, lowest index on ties) the top_k most confident candidates stay
    (sorted by class, conf descending, row ascending).
    agree: None (no agreement) or {"rects": [(row, col, S)], "rect_of_row": (A) rect of each row (-1:
    the class token), "cell_label": (gh, gw) int array, updated in place}: first every row with a rect
    paints its label on its rect's patches (patches of tokens halted earlier keep theirs), then a row is
    a candidate only if every patch just outside its rect's four edges (not the corners; inside the
    grid) carries its label (native/cpu/token_compact.cpp, agrees).
    -> (halt flags per row, [(conf, halted, class, agrees, top-1 minus top-2 logit)] for rows prefix..)."""
    lg = logits.double().cpu().numpy()
    A = lg.shape[0]
    best = lg.argmax(1)
    top2 = np.sort(lg, 1)[:, -2:] if lg.shape[1] > 1 else np.concatenate([lg, np.full_like(lg, -np.inf)], 1)
    gap = top2[:, 1] - top2[:, 0]
    conf = (1.0 / np.exp(lg - lg.max(1, keepdims=True)).sum(1)).astype(np.float32)
    ok = [True] * A
    if agree is not None:
        rects, rect_of_row, labels = agree["rects"], agree["rect_of_row"], agree["cell_label"]
        for r in range(A):
            if rect_of_row[r] >= 0:
                y, x, s = rects[rect_of_row[r]]
                labels[y:y + s, x:x + s] = best[r]
        for r in range(prefix, A):
            ok[r] = agrees(labels, rects[rect_of_row[r]], int(best[r]))
    cands = [(int(best[r]), float(conf[r]), r) for r in range(prefix, A) if conf[r] >= np.float32(threshold) and ok[r]]
    cands.sort(key=lambda c: (c[0], -c[1], c[2]))
    halt = [False] * A
    rank, prev = 0, None
    for cls, _, r in cands:
        rank = rank + 1 if cls == prev else 0
        prev = cls
        if rank >= top_k:
            halt[r] = True
    info = [(float(conf[r]), halt[r], int(best[r]), ok[r], float(gap[r])) for r in range(prefix, A)]
    return halt, info


def agrees(labels, rect, label):
    """Every patch just outside the rect's four edges, inside the grid, has `label` (the corners
    diagonal to the rect are not neighbours)."""
    gh, gw = labels.shape
    y, x, s = rect
    sides = [labels[y - 1, x:x + s]] if y > 0 else []
    sides += [labels[y + s, x:x + s]] if y + s < gh else []
    sides += [labels[y:y + s, x - 1]] if x > 0 else []
    sides += [labels[y:y + s, x + s]] if x + s < gw else []
    return all(bool((v == label).all()) for v in sides)


def unshare(rect_logits, rects, index, gh, gw, mode="blend"):
    """ops.h unshare: rect logits (T, K) -> the patch grid (K, gh, gw). 'copy': every patch of a rect
    gets its token's logits. 'blend': the copy, then every patch of a rect of side S > 1 is the mean of
    the copy over the S x S box centred on it: offsets o = -(S // 2) .. S // 2 per axis with weight
    min(1, (S + 1) / 2 - |o|) (so 1/2 at both ends for even S), the product over the two axes, divided
    by S^2; offsets past the grid's edge read the edge patch (clamped). 1 x 1 rects keep their copy."""
    if mode not in ("copy", "blend"):
        raise ValueError(f"unshare: mode {mode!r}, not 'copy' or 'blend'")
    K = rect_logits.shape[1]
    idx = torch.as_tensor(np.asarray(index), dtype=torch.long, device=rect_logits.device)
    copy = rect_logits[idx].reshape(gh, gw, K)
    out = copy.clone()
    if mode == "blend":
        for y, x, s in rects:
            if s == 1:
                continue
            o = torch.arange(-(s // 2), s // 2 + 1, device=copy.device)
            wgt = torch.clamp(0.5 * (s + 1) - o.abs().to(copy.dtype), max=1.0)  # (s + 1 or s)
            d = torch.arange(s, device=copy.device)[:, None]
            ys = (y + d + o).clamp(0, gh - 1)  # (s, n): rows read by each row of the rect
            xs = (x + d + o).clamp(0, gw - 1)
            box = copy[ys][:, :, xs]  # (s, n, s, n, K)
            out[y:y + s, x:x + s] = torch.einsum("a,b,iajbk->ijk", wgt, wgt, box) / (s * s)
    return out.permute(2, 0, 1)


def upsample_logits(logits, valid_h, valid_w, out_h, out_w, patch):
    """ops.h upsample (without the argmax): bilinear from the patch grid (B, K, gh, gw) to (out_h, out_w)
    through the resized image: g = (x + 0.5) * valid / (out * P) - 0.5, clamped at 0 and the grid's end."""
    def taps(out, valid, n):
        g = (torch.arange(out, dtype=torch.float64, device=logits.device) + 0.5) * valid / (out * patch) - 0.5
        g = g.clamp(min=0)
        i0 = g.floor().long().clamp(max=n - 1)
        i1 = (i0 + 1).clamp(max=n - 1)
        return i0, i1, (g - i0.double()).to(logits.dtype)
    gh, gw = logits.shape[2:]
    y0, y1, wy = taps(out_h, valid_h, gh)
    x0, x1, wx = taps(out_w, valid_w, gw)
    rows = logits[:, :, y0] * (1 - wy)[:, None] + logits[:, :, y1] * wy[:, None]  # (B, K, out_h, gw)
    return rows[..., x0] * (1 - wx) + rows[..., x1] * wx


def window_purity(labels, s, patch, void=CAMVID_VOID):
    """Policy targets from ground truth: labels (B, H, W) int -> (target (B, wh, ww) float 1 = the window's
    labelled pixels share one class, valid (B, wh, ww) bool = it has labelled pixels); windows of s x s
    patches aligned to the grid, void pixels ignored."""
    lab = labels.float()
    k = s * patch
    is_void = labels == void
    hi = F.max_pool2d(torch.where(is_void, torch.full_like(lab, -1), lab)[:, None], k)[:, 0]
    lo = -F.max_pool2d(torch.where(is_void, torch.full_like(lab, -1e4), -lab)[:, None], k)[:, 0]
    valid = hi >= 0
    return ((hi == lo) & valid).float(), valid


def gt_token_maps(labels, levels, patch, accept=1.0, generator=None, void=CAMVID_VOID):
    """Superpatches for training from ground truth: per image, windows whose labelled pixels share one
    class (largest level first, each accepted with probability `accept`), as token maps for forward_train."""
    B = labels.shape[0]
    gh, gw = labels.shape[1] // patch, labels.shape[2] // patch
    pure = {}
    for s in levels:
        t, v = window_purity(labels, s, patch, void)
        pure[s] = ((t > 0) & v).cpu().numpy()
    maps = []
    for b in range(B):
        scores = []
        for s in levels:
            p = pure[s][b].astype(np.float64)
            if accept < 1.0:
                r = torch.rand(p.shape, generator=generator).numpy()
                p = p * (r < accept)
            scores.append(p)
        rects, index = select_superpatches(gh, gw, levels, [0.5] * len(levels), scores)
        rr = torch.tensor(rects, dtype=torch.long)
        maps.append({"rows": rr[:, 0], "cols": rr[:, 1], "sizes": rr[:, 2],
                     "index": torch.tensor(index, dtype=torch.long).reshape(gh, gw)})
    return maps
