#!/usr/bin/env python3
"""train_policy.py: trains the learned merge policy (EfficientNet-Lite0 trunk from scratch + one head per
window side) on its own, from CamVid ground truth, for a ViT trained without one (train.py --levels with
no value). The policy's targets never depend on the ViT (a window is positive when all its labelled
pixels share one class, void ignored), so the two can be trained apart, on different machines or at the
same time, and joined at export:

  /usr/bin/python3 scripts/train_policy.py --threads 1 --time-budget 3600 --out /tmp/policy
  /usr/bin/python3 scripts/export.py RUN/best.pt /tmp/policy/best-policy.safetensors \\
      --merge-policy learned --merge-thresholds 0.9 0.85 0.8 --out weights/default

Samples: CamVid train at --scale (2: 960 x 720) times a jitter in --scale-jitter, a random --crop square
on the 16-px patch grid, horizontal flips, brightness/contrast jitter; input normalised as the engine
feeds the policy ((x - 127.5) / 127.5, zero padding). Loss: BCE per level over valid windows, positives
weighted by --pos-weight. AdamW at --lr, cosine to 0 over --iters or --time-budget. Every --eval-every
iterations and at the end: per level on CamVid val (whole images at --scale), precision (merged windows
that are pure) and recall (pure windows merged) at --thresholds; the best by the mean F1 is kept as
<out>/best-policy.safetensors (float16, BatchNorm statistics float32), engine names policy.trunk.* and
policy.heads.S.*.
"""
import argparse
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_common import jitter_colour, resize_image, resize_labels, scale_flip_crop, write_safetensors  # noqa: E402
from step_model import CAMVID_VOID, MergePolicy, window_purity  # noqa: E402
from train import load_split, schedule_progress  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
P = 16


def sample(img_u8, lab_u8, a, r):
    """(policy input (3, crop, crop) normalised as the engine feeds the policy, labels (crop, crop)):
    train.py's geometry and brightness / contrast (no saturation), then padding with zeros after the
    normalisation, as the engine pads the policy's input."""
    img, lab, _, _ = scale_flip_crop(img_u8, lab_u8, r, a.scale, a.scale_jitter, a.crop, P)
    x = (jitter_colour(img, r, 0.25, saturation=False) - 127.5) / 127.5
    ph, pw = a.crop - x.shape[1], a.crop - x.shape[2]
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
        lab = F.pad(lab, (0, pw, 0, ph), value=CAMVID_VOID)
    return x, lab


@torch.no_grad()
def evaluate(policy, val, a):
    policy.eval()
    stats = {s: [0, 0, 0] for s in policy.levels}
    for img_u8, lab_u8, _ in val:
        H, W = lab_u8.shape
        h, w = round(H * a.scale), round(W * a.scale)
        gh, gw = -(-h // P), -(-w // P)
        img = resize_image(torch.from_numpy(img_u8).permute(2, 0, 1).float(), h, w)
        x = F.pad((img.round() - 127.5) / 127.5, (0, gw * P - w, 0, gh * P - h))[None]
        lab = resize_labels(torch.from_numpy(lab_u8), h, w).long()
        lab = F.pad(lab, (0, gw * P - w, 0, gh * P - h), value=CAMVID_VOID)[None]
        out = policy(x, gh, gw)
        for li, s in enumerate(policy.levels):
            t, v = window_purity(lab, s, P)
            merged = (policy.merge_prob(out[s]) >= a.thresholds[li]) & v
            st = stats[s]
            st[0] += int((merged & (t > 0)).sum())
            st[1] += int(merged.sum())
            st[2] += int(((t > 0) & v).sum())
    policy.train()
    res = {}
    for s, (tp, m, pos) in stats.items():
        p, rc = tp / max(m, 1), tp / max(pos, 1)
        res[s] = {"precision": p, "recall": rc, "f1": 2 * p * rc / max(p + rc, 1e-9)}
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "camvid"))
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "policy"))
    ap.add_argument("--levels", type=int, nargs="+", default=[8, 4, 2])
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.9, 0.85, 0.8])
    ap.add_argument("--iters", type=int, default=100000)
    ap.add_argument("--time-budget", type=float, default=0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=384)
    ap.add_argument("--scale", type=float, default=2.0)
    ap.add_argument("--scale-jitter", type=float, nargs=2, default=[0.75, 1.5])
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--wd", type=float, default=1e-4)
    ap.add_argument("--pos-weight", type=float, default=1.0)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--val-limit", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool", type=int, default=1, choices=[1, 2, 4], help="average-pool the input by this first")
    ap.add_argument("--feature", type=int, default=4, choices=range(5),
                    help="the trunk's feature map the heads read (4: stride 32); the trunk stops there")
    a = ap.parse_args()
    assert len(a.thresholds) == len(a.levels), "one threshold per level"
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    os.makedirs(a.out, exist_ok=True)
    train = [(torch.from_numpy(i), torch.from_numpy(l)) for i, l, _ in load_split(a.data, "train")]
    val = load_split(a.data, "val", a.val_limit or None)
    policy = MergePolicy(a.levels, pool=a.pool, feature=a.feature)
    opt = torch.optim.AdamW(policy.parameters(), lr=a.lr, weight_decay=a.wd)
    r = random.Random(a.seed)
    start, it, best, history, acc = time.time(), 0, -1.0, [], {}

    def progress():
        return schedule_progress(it, a.iters, start, a.time_budget)

    def run_eval():
        nonlocal best
        res = evaluate(policy, val, a)
        f1 = sum(v["f1"] for v in res.values()) / len(res)
        history.append({"iter": it, "seconds": round(time.time() - start), "levels": res, "mean_f1": f1})
        print(f"eval iter {it}: " + "  ".join(f"p{s}: P {v['precision']:.3f} R {v['recall']:.3f}" for s, v in res.items()) +
              f"  mean F1 {f1:.3f}", flush=True)
        if f1 > best:
            best = f1
            sd = {f"policy.{k}": v for k, v in policy.state_dict().items() if not k.endswith("num_batches_tracked")}
            tensors = {k: ("F32" if k.endswith(("running_mean", "running_var")) else "F16", v) for k, v in sd.items()}
            meta = {"policy": json.dumps({"levels": a.levels, "thresholds": a.thresholds, "outputs": 1,
                                          "pool": a.pool, "feature": a.feature, "eval": res, "iter": it})}
            write_safetensors(os.path.join(a.out, "best-policy.safetensors"), tensors, meta)
        with open(os.path.join(a.out, "history.json"), "w") as f:
            json.dump(history, f, indent=1)

    while progress() < 1.0:
        f = 0.5 * (1 + math.cos(math.pi * progress()))
        for g in opt.param_groups:
            g["lr"] = a.lr * f
        batch = [sample(*train[r.randrange(len(train))], a, r) for _ in range(a.batch)]
        x = torch.stack([b[0] for b in batch])
        lab = torch.stack([b[1] for b in batch])
        g = a.crop // P
        out = policy(x, g, g)
        loss = 0
        for s in policy.levels:
            t, v = window_purity(lab, s, P)
            if not v.any():
                continue
            w = torch.where(t > 0, torch.full_like(t, a.pos_weight), torch.ones_like(t))
            bce = F.binary_cross_entropy_with_logits(out[s][:, 0], t, reduction="none")
            l_s = (bce * w * v).sum() / v.sum()
            acc[s] = acc.get(s, 0.0) + float(l_s)
            loss = loss + l_s
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        it += 1
        if it % 50 == 0:
            print(f"iter {it} ({progress() * 100:.1f}%) " + "  ".join(f"p{s} {v / 50:.4f}" for s, v in acc.items()), flush=True)
            acc = {}
        if it % a.eval_every == 0:
            run_eval()
    run_eval()
    print(f"trained {it} iterations in {time.time() - start:.0f} s; best mean F1 {best:.3f}", flush=True)


if __name__ == "__main__":
    main()
