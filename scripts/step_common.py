"""step_common.py: what the Python scripts share (imported from beside them; scripts/ is on sys.path
when a script there runs):
  safetensors   read_safetensors / write_safetensors (F32, F16, BF16, F64 and integer tensors, the
                __metadata__ map), encode / decode of one tensor
  reference ViT VisionTransformer: timm's VisionTransformer.forward_features in plain torch with timm's
                key names (class token or none, register tokens, no_embed_class, layer scale, pre-norm,
                position embeddings resampled as timm's resample_abs_pos_embed); vit_kwargs(cfg) maps
                an engine config (lib/config.ts) to its arguments
  sampler       the geometric part of a training sample (scale jitter, flip, crop on the patch grid)
                and the colour jitter, for train.py and train_policy.py
Runs on Debian's torch 1.13 (CPU) and on PyTorch 2.x; numpy 1.x or 2.x; no timm.
"""
import json
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ---------------------------------------------------------------------------------------------------
# safetensors: an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
# data_offsets}} (offsets into the data section that follows) with an optional __metadata__ map of
# strings, then the raw little-endian tensor bytes.

_NP_DTYPE = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "U8": "u1", "I8": "i1",
             "BOOL": "u1"}
_TORCH_DTYPE = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "I32": torch.int32,
                "U8": torch.uint8}


def decode(buf, dtype, shape):
    """Raw little-endian bytes -> torch tensor. Floats come back as float32 (BF16 and F16 widened
    exactly, F64 rounded), integers keep their type."""
    if dtype == "BF16":
        a = (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view("<f4")
    else:
        a = np.frombuffer(buf, _NP_DTYPE[dtype])
        if dtype in ("F16", "F64"):
            a = a.astype(np.float32)
    return torch.from_numpy(np.array(a).reshape(shape))


def encode(t, dtype):
    """A tensor -> its bytes as `dtype`, rounded to nearest even (BF16 from the float32 value)."""
    t = t.detach().cpu().contiguous()
    if dtype == "BF16":  # numpy has no bfloat16: round the float32 bits by hand
        bits = t.to(torch.float32).numpy().astype("<f4").view("<u4").astype(np.uint64)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2").tobytes()
    if dtype not in _TORCH_DTYPE:
        raise ValueError("unsupported dtype " + dtype)
    return t.to(_TORCH_DTYPE[dtype]).numpy().astype(_NP_DTYPE[dtype]).tobytes()


def read_safetensors(path):
    """-> ({name: torch tensor}, metadata dict), tensors as decode() returns them."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf8"))
    base = 8 + n
    meta = header.pop("__metadata__", {}) or {}
    tensors = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        tensors[name] = decode(raw[base + b:base + end], e["dtype"], e["shape"])
    return tensors, meta


def write_safetensors(path, tensors, metadata=None, dtype="F32"):
    """tensors: {name: tensor or (dtype, tensor)}; a bare tensor is stored as `dtype`. Insertion order;
    metadata values that are not strings are stored as JSON; the data section is 8-byte aligned."""
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    for name, v in tensors.items():
        dt, t = v if isinstance(v, tuple) else (dtype, v)
        data = encode(t, dt)
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode("utf8")
    h += b" " * (-(8 + len(h)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


# ---------------------------------------------------------------------------------------------------
# Reference ViT: timm's VisionTransformer (vision_transformer.py, timm 1.0), forward_features only.


def resample_pos_grid(grid, gh, gw):
    """(1, h, w, C) position embeddings -> (1, gh, gw, C): the patch part of timm's
    resample_abs_pos_embed (bicubic, antialias, align_corners False), computed in float32 or float64
    whatever autocast says."""
    if grid.shape[1] == gh and grid.shape[2] == gw:
        return grid
    dt = grid.dtype if grid.dtype == torch.float64 else torch.float32
    x = grid.to(dt).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(gh, gw), mode="bicubic", antialias=True, align_corners=False)
    return x.permute(0, 2, 3, 1).to(grid.dtype)


def resample_pos_embed(pos, prefix, src, dst):
    """(1, prefix + sh * sw, C) -> (1, prefix + dh * dw, C): the prefix entries as they are, the grid
    of src = (sh, sw) resampled to dst = (dh, dw)."""
    C = pos.shape[-1]
    grid = resample_pos_grid(pos[:, prefix:].reshape(1, src[0], src[1], C), dst[0], dst[1])
    return torch.cat([pos[:, :prefix], grid.reshape(1, dst[0] * dst[1], C)], 1)


def _sdpa():
    return getattr(F, "scaled_dot_product_attention", None)  # PyTorch >= 2.0


class Attention(nn.Module):
    """fused: PyTorch 2's scaled_dot_product_attention where there is one; otherwise (and by default)
    softmax(q * D^-0.5 k^T) v written out, as timm's non-fused path."""

    def __init__(self, dim, heads, qkv_bias=True, fused=False):
        super().__init__()
        self.heads, self.head_dim, self.fused = heads, dim // heads, fused
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, key_mask=None):
        """x (B, T, C); key_mask (B, T) bool, True = a real token (others are neither keys nor values)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).reshape(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, T, D)
        sdpa = _sdpa() if self.fused else None
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, T)
        if sdpa is not None:
            y = sdpa(q, k, v, attn_mask=mask)
        else:
            a = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)  # (B, H, T, T)
            if mask is not None:
                a = a.masked_fill(~mask, float("-inf"))
            y = a.softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)  # exact (erf) GELU

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim, init_values):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Block(nn.Module):
    """x = x + ls1(attn(norm1(x))); x = x + ls2(mlp(norm2(x))); layer scale only with init_values."""

    def __init__(self, dim, heads, hidden, eps, qkv_bias=True, init_values=None, fused=False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, qkv_bias, fused)
        self.ls1 = LayerScale(dim, init_values) if init_values is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, hidden)
        self.ls2 = LayerScale(dim, init_values) if init_values is not None else nn.Identity()

    def forward(self, x, key_mask=None):
        x = x + self.ls1(self.attn(self.norm1(x), key_mask))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch, dim, bias=True):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch, bias=bias)

    def forward(self, x):  # (B, 3, H, W) -> (B, gh * gw, C)
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """timm's VisionTransformer without its head: patch_embed -> _pos_embed -> norm_pre -> blocks -> norm.
    dynamic_img_size (as timm's): an input whose patch grid is not the trained one gets the position
    embeddings resampled; without it the input must be img_size (nothing in the trace depends on it)."""

    def __init__(self, img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio=4.0, qkv_bias=True,
                 class_token=True, reg_tokens=0, no_embed_class=False, pre_norm=False, init_values=None,
                 norm_eps=1e-6, fused_attention=False, dynamic_img_size=False):
        super().__init__()
        C, P = embed_dim, patch_size
        self.C, self.P, self.depth, self.dynamic_img_size = C, P, depth, dynamic_img_size
        self.grid = (img_size[0] // P, img_size[1] // P)
        self.num_prefix_tokens = (1 if class_token else 0) + reg_tokens
        self.no_embed_class = no_embed_class
        self.patch_embed = PatchEmbed(P, C, bias=not pre_norm)  # timm: PatchEmbed(bias=not pre_norm)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, C)) if class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, C)) if reg_tokens else None
        pos_len = (0 if no_embed_class else self.num_prefix_tokens) + self.grid[0] * self.grid[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_len, C))
        self.norm_pre = nn.LayerNorm(C, eps=norm_eps) if pre_norm else nn.Identity()
        hidden = int(round(C * mlp_ratio))
        self.blocks = nn.Sequential(*[Block(C, num_heads, hidden, norm_eps, qkv_bias, init_values, fused_attention)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(C, eps=norm_eps)

    def pos_grid(self, gh, gw):
        """(1, gh, gw, C) position embeddings of the patch grid (resampled when it is not the trained one)."""
        start = 0 if self.no_embed_class else self.num_prefix_tokens
        g = self.pos_embed[:, start:].reshape(1, self.grid[0], self.grid[1], self.C)
        return resample_pos_grid(g, gh, gw)

    def forward_features(self, x, acts=None):
        """x: (B, 3, H, W) normalised -> final-norm tokens (B, prefix + gh * gw, C): prefix tokens (class,
        registers), then patches row-major. acts: a dict to fill with patch_embed (before the position
        embeddings), tokens_0 (the blocks' input) and block_<i> (block i's output)."""
        y = self.patch_embed(x)
        if acts is not None:
            acts["patch_embed"] = y
        pos = self.pos_embed
        if self.dynamic_img_size and (x.shape[2] // self.P, x.shape[3] // self.P) != self.grid:
            start = 0 if self.no_embed_class else self.num_prefix_tokens
            pos = resample_pos_embed(pos, start, self.grid, (x.shape[2] // self.P, x.shape[3] // self.P))
        prefix = [t.expand(y.shape[0], -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        if self.no_embed_class:  # timm's _pos_embed: add, then prepend the prefix tokens
            y = y + pos
        if prefix:
            y = torch.cat(prefix + [y], 1)
        if not self.no_embed_class:
            y = y + pos
        if acts is not None:
            acts["tokens_0"] = y
        y = self.norm_pre(y)
        if acts is None:
            return self.norm(self.blocks(y))
        for i, blk in enumerate(self.blocks):
            y = blk(y)
            acts[f"block_{i}"] = y
        return self.norm(y)

    def forward(self, x):
        return self.forward_features(x)


def vit_kwargs(cfg, img_size=None):
    """An engine config (lib/config.ts schema, timm's field names) -> VisionTransformer's arguments."""
    img = img_size if img_size is not None else cfg["img_size"]
    img = [img, img] if isinstance(img, int) else list(img)
    return {"img_size": img, "patch_size": cfg["patch_size"], "embed_dim": cfg["embed_dim"], "depth": cfg["depth"],
            "num_heads": cfg["num_heads"], "mlp_ratio": cfg.get("mlp_ratio", 4.0),
            "qkv_bias": cfg.get("qkv_bias", True), "class_token": cfg.get("class_token", True),
            "reg_tokens": cfg.get("reg_tokens", 0), "no_embed_class": cfg.get("no_embed_class", False),
            "pre_norm": cfg.get("pre_norm", False), "init_values": cfg.get("init_values"),
            "norm_eps": cfg.get("norm_eps", 1e-6)}


# ---------------------------------------------------------------------------------------------------
# Training sampler (train.py, train_policy.py)


def resize_image(img, h, w):
    """(3, H, W) float 0..255 -> (3, h, w): bicubic up, antialiased down, clamped."""
    down = h < img.shape[1] or w < img.shape[2]
    y = F.interpolate(img[None], size=(h, w), mode="bicubic", align_corners=False, antialias=down)[0]
    return y.clamp(0, 255)


def resize_labels(lab, h, w):
    return F.interpolate(lab[None, None].float(), size=(h, w), mode="nearest")[0, 0].to(torch.uint8)


def scale_flip_crop(img_u8, lab_u8, r, scale, jitter, crop, patch):
    """The geometric part of a training sample, drawn from r (a random.Random): the image resized by
    scale times a factor in jitter (bicubic; labels nearest), flipped with probability 1/2, and a
    crop x crop window starting on the patch grid (smaller where the image is).
    -> (image (3, h, w) float 0..255, labels (h, w) long, (oy, ox) the window's offset in pixels,
    (gh, gw) the resized image's patch grid as the engine rounds it)."""
    H, W = lab_u8.shape
    s = scale * r.uniform(*jitter)
    h, w = max(1, round(H * s)), max(1, round(W * s))
    img = resize_image(img_u8.permute(2, 0, 1).float(), h, w)
    lab = resize_labels(lab_u8, h, w).long()
    if r.random() < 0.5:
        img, lab = img.flip(-1), lab.flip(-1)
    gh, gw = -(-h // patch), -(-w // patch)
    oy = r.randrange(0, max(gh - crop // patch, 0) + 1) * patch
    ox = r.randrange(0, max(gw - crop // patch, 0) + 1) * patch
    return img[:, oy:oy + crop, ox:ox + crop], lab[oy:oy + crop, ox:ox + crop], (oy, ox), (gh, gw)


def jitter_colour(img, r, c, saturation=True):
    """Brightness and contrast (about the image's mean), then saturation (about the luma), each a factor
    in [1 - c, 1 + c] drawn from r; clamped to 0..255."""
    img = img * r.uniform(1 - c, 1 + c)
    grey = img.mean()
    img = (img - grey) * r.uniform(1 - c, 1 + c) + grey
    if saturation:
        g = (img * torch.tensor([0.299, 0.587, 0.114], device=img.device)[:, None, None]).sum(0, keepdim=True)
        img = (img - g) * r.uniform(1 - c, 1 + c) + g
    return img.clamp(0, 255)
