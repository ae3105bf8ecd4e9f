#!/usr/bin/env python3
"""train.py: trains a StepSeg model on CamVid (the default model's recipe), on the CPU or a GPU.

Model: a timm ViT started from DeiT-Tiny (../shared/weights), a linear head, exit heads after some blocks
(STEP's pruning) and the learned merge policy (an EfficientNet-Lite0 trunk from scratch and one head per
window side). The position embeddings are trained for the whole image at the training scale (720 x 960
at 2x, a 45 x 60 grid); a crop takes its window of them (crops start on the patch grid), after
resampling the trained grid to the scale-jittered image's grid as the engine would, so the model learns
where in the image a patch is, and the engine runs 960-px images on exactly the trained grid.

Data (--data): CamVid as ../shared/data/camvid holds it (train/, trainannot/, val/, valannot/; images
480 x 360, labels 0..10 plus 11 void), or the same layout with JPEG images (scripts/pack_camvid.py makes
one under 64 MiB to carry to a GPU machine). All of it is loaded once and augmented on the device:
  scale: the image is resized by --scale times a factor drawn from --scale-jitter (bicubic; labels
  nearest); a random --crop x --crop window (on the patch grid; padded with void where the image is
  smaller); a horizontal flip; brightness, contrast and saturation jitter.
Losses: cross-entropy (void ignored) of the final head's patch logits upsampled bilinearly to the crop
(as the engine upsamples), the same for every exit head times --exit-weight (deep supervision), and for
the policy a BCE per window level: a window is positive when all its labelled pixels share one class
(void ignored; windows with no labelled pixel are left out). With probability --merge-train a batch runs
with superpatches (windows that are pure in the ground truth, each taken with probability
--merge-accept), so the ViT learns the merged tokens it meets at inference.
Optimiser: AdamW, the backbone at --lr, the new heads at --lr x --head-lr-mult, the policy at
--policy-lr; linear warm-up, then cosine decay over --iters or --time-budget seconds, whichever ends first.
Evaluation: mIoU over the whole val split (one confusion matrix), predictions at the label size from
the patch logits upsampled as the engine does; the best checkpoint by val mIoU is kept as
<out>/best-vit.safetensors + <out>/best-policy.safetensors (float16, config in the metadata; two files
so that each stays under 16 MB) and <out>/best.pt (float32). --step-eval then measures the best model as
the engine runs it (merging with the learned policy, pruning), per image.

  CPU smoke:  /usr/bin/python3 scripts/train.py --device cpu --iters 4 --batch 2 --crop 128 --scale 1 \\
                --val-limit 4 --eval-every 4 --threads 1 --out /tmp/smoke
  GPU:        python3 scripts/train.py --device cuda --data .camvid \\
                --init .camvid/deit_tiny_patch16_224.f16.safetensors --batch 8 --crop 640 \\
                --iters 100000 --time-budget 1020 --eval-every 1000 --step-eval --out /tmp/run
              (.camvid from scripts/pack_camvid.py; the time budget ends training, the schedule fits it)
Then: scripts/export.py <out>/best-vit.safetensors <out>/best-policy.safetensors --out weights/default
"""
import argparse
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True  # no scripts/__pycache__ in the working tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_common import (IMAGENET_MEAN, IMAGENET_STD, jitter_colour, resize_image, resize_labels,  # noqa: E402
                         scale_flip_crop, write_safetensors)
from step_model import CAMVID_CLASSES, CAMVID_VOID, StepSeg, gt_token_maps, make_config, upsample_logits, window_purity  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = len(CAMVID_CLASSES)


# ---------------------------------------------------------------------------------------------------
# Data


def load_split(root, split, limit=None):
    """-> [(image (H, W, 3) uint8, labels (H, W) uint8, name)] for train/ + trainannot/ (or val)."""
    from PIL import Image
    img_dir, lab_dir = os.path.join(root, split), os.path.join(root, split + "annot")
    names = sorted(os.path.splitext(f)[0] for f in os.listdir(lab_dir) if f.endswith(".png"))
    if limit:
        names = names[:limit]
    images = {os.path.splitext(f)[0]: f for f in os.listdir(img_dir)}
    out = []
    for n in names:
        img = np.array(Image.open(os.path.join(img_dir, images[n])).convert("RGB"))
        lab = np.array(Image.open(os.path.join(lab_dir, n + ".png")))
        assert img.shape[:2] == lab.shape, f"{n}: image {img.shape} and labels {lab.shape} differ in size"
        out.append((img, lab, n))
    return out


class Augmenter:
    def __init__(self, model, crop, scale, jitter, colour, seed):
        self.model, self.crop, self.scale, self.jitter, self.colour = model, crop, scale, jitter, colour
        self.rng = random.Random(seed)
        self.P = model.P

    def sample(self, img_u8, lab_u8):
        """One training sample: (image (3, crop, crop) float 0..255, labels (crop, crop) long,
        pos (crop/P, crop/P, C) the crop's window of its image's position grid)."""
        P, crop = self.P, self.crop
        img, lab, (oy, ox), (gh, gw) = scale_flip_crop(img_u8, lab_u8, self.rng, self.scale, self.jitter, crop, P)
        pos = self.model.pos_grid(gh, gw)[0]  # (gh, gw, C) for the engine's grid of this image, differentiable
        pos = pos[oy // P:oy // P + crop // P, ox // P:ox // P + crop // P]
        # Where the image is smaller than the crop, pad (mean colour, void; positions replicated).
        ph, pw = crop - img.shape[1], crop - img.shape[2]
        if ph or pw:
            mean = torch.tensor(IMAGENET_MEAN, device=img.device)[:, None, None] * 255
            img = F.pad(img - mean, (0, pw, 0, ph)) + mean
            lab = F.pad(lab, (0, pw, 0, ph), value=CAMVID_VOID)
            pos = F.pad(pos.permute(2, 0, 1)[None], (0, pw // P, 0, ph // P), mode="replicate")[0].permute(1, 2, 0)
        if self.colour > 0:
            img = jitter_colour(img, self.rng, self.colour)
        return img, lab, pos


def normalise(img, device):
    """(B, 3, H, W) 0..255 -> (ViT input, policy input)."""
    mean = torch.tensor(IMAGENET_MEAN, device=device)[None, :, None, None] * 255
    std = torch.tensor(IMAGENET_STD, device=device)[None, :, None, None] * 255
    return (img - mean) / std, (img - 127.5) / 127.5


# ---------------------------------------------------------------------------------------------------
# Evaluation


def confusion(pred, lab, k=K):
    m = lab != CAMVID_VOID
    return torch.bincount(lab[m].long() * k + pred[m].long(), minlength=k * k).reshape(k, k).cpu()


def miou(conf):
    conf = conf.double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    iou = inter / union.clamp(min=1)
    present = union > 0
    return float(iou[present].mean()), iou.tolist()


def scaled_val_image(img_u8, scale, device):
    """The image as the engine gets it: resized to the scale (long side = 480 * scale), rounded to uint8."""
    H, W = img_u8.shape[:2]
    h, w = max(1, round(H * scale)), max(1, round(W * scale))
    x = resize_image(torch.from_numpy(img_u8).to(device).permute(2, 0, 1).float(), h, w)
    return x.round()  # (3, h, w) integral values


@torch.no_grad()
def evaluate(model, val, scale, device, amp, batch=8, policy_thresholds=None):
    """Dense mIoU of the final head and of every exit head over the whole split; with a policy, per level
    the precision (windows it merges that are pure) and recall (pure windows it merges) at the thresholds."""
    model.eval()
    P = model.P
    confs = {"final": torch.zeros(K, K, dtype=torch.long)}
    for l in model.exit_layers:
        confs[f"exit{l}"] = torch.zeros(K, K, dtype=torch.long)
    pol = {}
    for i in range(0, len(val), batch):
        chunk = val[i:i + batch]
        xs = [scaled_val_image(img, scale, device) for img, _, _ in chunk]
        h, w = xs[0].shape[1:]
        gh, gw = -(-h // P), -(-w // P)
        x = torch.zeros(len(xs), 3, gh * P, gw * P, device=device)
        mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None] * 255
        x[:] = mean  # padding is the mean colour: 0 after normalisation, as the engine pads
        for b, xi in enumerate(xs):
            assert xi.shape[1:] == (h, w), "val images must share one size"
            x[b, :, :h, :w] = xi
        vx, px = normalise(x, device)
        px[:, :, h:, :] = 0
        px[:, :, :, w:] = 0
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
            out = model.forward_train(vx, px if model.policy is not None else None)
        labs = torch.stack([torch.from_numpy(lab) for _, lab, _ in chunk]).to(device)
        H, W = labs.shape[1:]
        heads = {"final": out["logits"], **{f"exit{l}": v for l, v in out["exits"].items()}}
        for name, lg in heads.items():
            pred = upsample_logits(lg.float(), h, w, H, W, P).argmax(1)
            confs[name] += confusion(pred, labs)
        if model.policy is not None:
            # targets on the scaled labels, windows aligned to the patch grid as at inference
            lab_s = torch.stack([resize_labels(l, h, w) for l in labs]).long()
            lab_s = F.pad(lab_s, (0, gw * P - w, 0, gh * P - h), value=CAMVID_VOID)
            for li, s in enumerate(model.policy.levels):
                t, v = window_purity(lab_s, s, P)
                p = model.policy.merge_prob(out["policy"][s].float())
                thr = policy_thresholds[li] if policy_thresholds else 0.5
                merged = (p >= thr) & v
                st = pol.setdefault(s, [0, 0, 0])
                st[0] += int((merged & (t > 0)).sum())
                st[1] += int(merged.sum())
                st[2] += int(((t > 0) & v).sum())
    model.train()
    res = {name: miou(c)[0] for name, c in confs.items()}
    res["iou"] = miou(confs["final"])[1]
    for s, (tp, m, pos) in pol.items():
        res[f"policy{s}"] = {"precision": tp / max(m, 1), "recall": tp / max(pos, 1), "merged": m}
    return res


@torch.no_grad()
def step_evaluate(model, val, scale, device, merge, prune):
    """mIoU as the engine runs the model (StepSeg.infer: merging, halting), and the token counts."""
    model.eval()
    conf = torch.zeros(K, K, dtype=torch.long)
    tokens = dense = halted = 0
    t0 = time.time()
    for img, lab, _ in val:
        x = scaled_val_image(img, scale, device)
        rgb = x.permute(1, 2, 0).to(torch.uint8).cpu().numpy()
        r = model.infer(rgb, merge, prune)
        H, W = lab.shape
        pred = upsample_logits(r["logits"][None].float(), rgb.shape[0], rgb.shape[1], H, W, model.P).argmax(1)[0]
        conf += confusion(pred, torch.from_numpy(lab).to(device))
        tokens += len(r["rects"]) + 1
        dense += r["index"].size + 1
        _, first = np.unique(r["index"], return_index=True)  # one patch of every token
        halted += int((r["exit_layer"][first] < model.depth).sum())
    model.train()
    return {"miou": miou(conf)[0], "tokens_ratio": tokens / dense, "halted_fraction": halted / max(tokens, 1),
            "seconds": time.time() - t0}


# ---------------------------------------------------------------------------------------------------


def schedule_progress(it, iters, start, time_budget):
    """The fraction of a schedule done, in 0..1: iterations of `iters`, or seconds since `start` of
    `time_budget` (0: none) when further along."""
    p = it / iters
    if time_budget:
        p = max(p, (time.time() - start) / time_budget)
    return min(p, 1.0)


def param_groups(model, lr, head_mult, policy_lr, wd):
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "policy" if name.startswith("policy.") else "head" if name.startswith(("decoder.", "exit_heads.")) else "backbone"
        no_decay = p.ndim <= 1 or name in ("pos_embed", "cls_token")
        key = (part, no_decay)
        groups.setdefault(key, []).append(p)
    base = {"backbone": lr, "head": lr * head_mult, "policy": policy_lr}
    return [{"params": ps, "lr": base[part], "base_lr": base[part], "weight_decay": 0.0 if nd else wd, "name": f"{part}{'/nd' if nd else ''}"}
            for (part, nd), ps in groups.items()]


def save_best(model, out, metrics):
    sd = model.engine_state_dict()
    cfg = dict(model.cfg)
    cfg["note"] = f"CamVid, val mIoU {metrics['final']:.4f} (dense, scale {metrics['scale']}); scripts/train.py"
    meta = {"config": json.dumps(cfg), "metrics": json.dumps(metrics)}
    vit = {k: ("F16", v) for k, v in sd.items() if not k.startswith("policy.")}
    write_safetensors(os.path.join(out, "best-vit.safetensors"), vit, meta)
    pol = {k: ("F32" if k.endswith(("running_mean", "running_var")) else "F16", v) for k, v in sd.items() if k.startswith("policy.")}
    if pol:
        write_safetensors(os.path.join(out, "best-policy.safetensors"), pol, {"config": json.dumps(cfg)})
    torch.save({"config": cfg, "state_dict": {k: v.float().cpu() for k, v in sd.items()}, "metrics": metrics},
               os.path.join(out, "best.pt"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "camvid"))
    ap.add_argument("--init", default=os.path.join(ROOT, "..", "shared", "weights", "deit_tiny_patch16_224.safetensors"),
                    help="timm ViT checkpoint to start the backbone from ('none': random)")
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "camvid"))
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--iters", type=int, default=20000)
    ap.add_argument("--time-budget", type=float, default=0, help="seconds of training (0: no limit); the schedule fits it")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=512, help="square crop side in pixels (a multiple of the largest window, 128 px)")
    ap.add_argument("--scale", type=float, default=2.0, help="image scale: 2 trains and evaluates at 960 x 720")
    ap.add_argument("--scale-jitter", type=float, nargs=2, default=[0.75, 1.5], help="random factor on --scale")
    ap.add_argument("--colour-jitter", type=float, default=0.25)
    ap.add_argument("--embed-dim", type=int, default=192)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--exit-layers", type=int, nargs="*", default=[4, 8])
    ap.add_argument("--exit-weight", type=float, default=0.4)
    ap.add_argument("--levels", type=int, nargs="*", default=[8, 4, 2], help="policy window sides ([]: no policy)")
    ap.add_argument("--policy-thresholds", type=float, nargs="*", default=[0.9, 0.85, 0.8])
    ap.add_argument("--policy-weight", type=float, default=1.0)
    ap.add_argument("--merge-train", type=float, default=0.5, help="fraction of batches run with ground-truth superpatches")
    ap.add_argument("--merge-accept", type=float, default=0.8)
    ap.add_argument("--prune-threshold", type=float, default=0.95)
    ap.add_argument("--keep-top-k", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--head-lr-mult", type=float, default=10.0)
    ap.add_argument("--policy-lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--warmup", type=float, default=0.03, help="fraction of the schedule")
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--val-limit", type=int, default=0, help="evaluate on the first N val images only (smoke runs)")
    ap.add_argument("--train-limit", type=int, default=0)
    ap.add_argument("--step-eval", action="store_true", help="at the end, evaluate the best model as the engine runs it")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: its default)")
    ap.add_argument("--amp", choices=["auto", "on", "off"], default="auto", help="bfloat16 autocast (auto: on CUDA)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=50)
    a = ap.parse_args()

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    device = a.device
    amp = a.amp == "on" or (a.amp == "auto" and device.startswith("cuda"))
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed crop size: the policy trunk's convolutions
    os.makedirs(a.out, exist_ok=True)
    window = 16 * max(a.levels + [2])
    assert a.crop % window == 0, f"--crop must be a multiple of {window} px (the largest policy window)"

    t0 = time.time()
    train = load_split(a.data, "train", a.train_limit or None)
    val = load_split(a.data, "val", a.val_limit or None)
    H, W = train[0][1].shape
    print(f"data: {len(train)} train, {len(val)} val images of {W} x {H} from {a.data} ({time.time() - t0:.1f} s)", flush=True)

    # The trained grid is the whole image at the training scale: crops take their window of it.
    P = 16
    img_size = (-(-round(H * a.scale) // P) * P, -(-round(W * a.scale) // P) * P)
    cfg = make_config(embed_dim=a.embed_dim, depth=a.depth, num_heads=a.heads, img_size=img_size,
                      input_size=round(max(H, W) * a.scale), exit_layers=a.exit_layers,
                      prune_threshold=a.prune_threshold, keep_top_k=a.keep_top_k,
                      merge_policy="learned" if a.levels else "similarity", merge_levels=a.levels or [8, 4, 2],
                      merge_thresholds=a.policy_thresholds if a.levels else None)
    model = StepSeg(cfg)
    if a.init and a.init != "none":
        model.load_deit_tiny(a.init)
        print(f"backbone from {a.init}, position embeddings resampled to {model.grid}", flush=True)
    model.to(device).train()
    n_params = sum(p.numel() for p in model.parameters())
    n_policy = sum(p.numel() for p in model.policy.parameters()) if model.policy is not None else 0
    print(f"model: {n_params / 1e6:.2f}M parameters ({n_policy / 1e6:.2f}M in the policy), grid {model.grid}, "
          f"exits {model.exit_layers}, policy levels {model.policy.levels if model.policy is not None else []}", flush=True)

    train_dev = [(torch.from_numpy(img).to(device), torch.from_numpy(lab).to(device)) for img, lab, _ in train]
    aug = Augmenter(model, a.crop, a.scale, a.scale_jitter, a.colour_jitter, a.seed)
    opt = torch.optim.AdamW(param_groups(model, a.lr, a.head_lr_mult, a.policy_lr, a.wd), betas=(0.9, 0.999))
    gen = torch.Generator().manual_seed(a.seed)
    rng = random.Random(a.seed + 1)
    order = []
    best, history = -1.0, []
    start = time.time()
    it, last_log, loss_acc = 0, time.time(), {}

    def progress():
        return schedule_progress(it, a.iters, start, a.time_budget)

    def run_eval():
        nonlocal best
        ev = evaluate(model, val, a.scale, device, amp, policy_thresholds=a.policy_thresholds if a.levels else None)
        ev.update(iter=it, seconds=round(time.time() - start, 1), scale=a.scale)
        history.append(ev)
        pol = " ".join(f"p{s}: P {ev[f'policy{s}']['precision']:.3f} R {ev[f'policy{s}']['recall']:.3f}"
                       for s in (model.policy.levels if model.policy is not None else []))
        exits = " ".join(f"exit{l} {ev[f'exit{l}']:.4f}" for l in model.exit_layers)
        print(f"eval iter {it}: val mIoU {ev['final']:.4f}  {exits}  {pol}", flush=True)
        if ev["final"] > best:
            best = ev["final"]
            save_best(model, a.out, ev)
        with open(os.path.join(a.out, "history.json"), "w") as f:
            json.dump(history, f, indent=1)

    while progress() < 1.0:
        p = progress()
        warm = a.warmup
        f = p / warm if p < warm else 0.5 * (1 + math.cos(math.pi * (p - warm) / (1 - warm)))
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * f
        if len(order) < a.batch:
            order += rng.sample(range(len(train_dev)), len(train_dev))
        idx, order = order[:a.batch], order[a.batch:]
        samples = [aug.sample(*train_dev[i]) for i in idx]
        img = torch.stack([s[0] for s in samples])
        lab = torch.stack([s[1] for s in samples])
        pos = torch.stack([s[2] for s in samples])
        vx, px = normalise(img, device)
        maps = None
        if a.merge_train > 0 and rng.random() < a.merge_train:
            maps = gt_token_maps(lab, cfg["merge"]["levels"], P, a.merge_accept, gen)
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
            out = model.forward_train(vx, px if model.policy is not None else None, maps, pos=pos)
            losses = {}
            up = lambda lg: F.interpolate(lg.float(), size=lab.shape[1:], mode="bilinear", align_corners=False)  # noqa: E731
            losses["seg"] = F.cross_entropy(up(out["logits"]), lab, ignore_index=CAMVID_VOID)
            for l, lg in out["exits"].items():
                losses[f"exit{l}"] = a.exit_weight * F.cross_entropy(up(lg), lab, ignore_index=CAMVID_VOID)
            for s, lg in out.get("policy", {}).items():
                t, v = window_purity(lab, s, P)
                if v.any():
                    if model.policy.outputs == 1:
                        bce = F.binary_cross_entropy_with_logits(lg[:, 0].float(), t, reduction="none")
                    else:
                        bce = F.cross_entropy(lg.float(), t.long(), reduction="none")
                    losses[f"policy{s}"] = a.policy_weight * (bce * v).sum() / v.sum()
            loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        it += 1
        for k, v in losses.items():
            loss_acc[k] = loss_acc.get(k, 0.0) + float(v)
        if it % a.log_every == 0 or it == 1:
            n = 1 if it == 1 else a.log_every
            dt = (time.time() - last_log) / n
            last_log = time.time()
            print(f"iter {it} ({p * 100:.1f}%) lr {a.lr * f:.2e} {dt:.3f} s/iter  " +
                  "  ".join(f"{k} {v / n:.4f}" for k, v in loss_acc.items()), flush=True)
            loss_acc = {}
        if it % a.eval_every == 0:
            run_eval()
    if not history or history[-1]["iter"] != it:
        run_eval()
    train_s = time.time() - start
    print(f"trained {it} iterations in {train_s:.0f} s ({train_s / max(it, 1):.3f} s/iter); best val mIoU {best:.4f}", flush=True)

    if a.step_eval:
        ck = torch.load(os.path.join(a.out, "best.pt"), map_location="cpu")
        model.load_engine_weights(ck["state_dict"])
        model.eval()
        prune = cfg.get("prune") or None
        sim = {"policy": "similarity", "levels": [8, 4, 2], "thresholds": [0.8, 0.7, 0.6], "color_tau": 16, "texture_tau": 32}
        runs = {"dense": (None, None), "prune": (None, prune), "similarity + prune": (sim, prune)}
        if model.policy is not None:
            learned = {"policy": "learned", "levels": cfg["merge"]["levels"], "thresholds": cfg["merge"]["thresholds"]}
            looser = dict(learned, thresholds=[round(t - 0.1, 3) for t in learned["thresholds"]])
            runs.update({f"learned {learned['thresholds']}": (learned, None),
                         f"learned {learned['thresholds']} + prune": (learned, prune),
                         f"learned {looser['thresholds']} + prune": (looser, prune)})
        res = {name: step_evaluate(model, val, a.scale, device, mg, pr) for name, (mg, pr) in runs.items()}
        for k, v in res.items():
            print(f"step-eval {k}: mIoU {v['miou']:.4f} tokens {v['tokens_ratio']:.3f} halted {v['halted_fraction']:.3f} "
                  f"({v['seconds']:.1f} s)", flush=True)
        with open(os.path.join(a.out, "step-eval.json"), "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
