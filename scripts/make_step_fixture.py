#!/usr/bin/env python3
"""make_step_fixture.py: the engine-vs-PyTorch parity fixture for STEP inference, test/fixtures/step-small/.

  config.json, model.safetensors  a small StepSeg (embed 64, depth 4, heads 2, CamVid's 11 classes, exit
                                  heads after blocks 1 and 2, float16 weights, trained grid 6 x 8) written
                                  by export.py; merge: the similarity scorer; prune: exits 1 and 2
  reference.safetensors           image_<i> (h, w, 3) uint8 raw pixels (crops of assets/demo-rocket.jpg
                                  resized with PIL; one size off the patch grid, so padding is exercised);
                                  for every image and case <i>.<case>.{logits (K, gh, gw), index, size,
                                  exit_layer (gh * gw)} from StepSeg.infer in float64 (stored float32);
                                  for the cases with agreement also <i>.<case>.blocked (gh * gw): the first
                                  exit at which the patch's token was confident but its neighbours
                                  disagreed (0: none);
                                  policy.heads.<S>.{weight, bias} of the learned-policy case;
                                  __metadata__.cases: JSON {case: {merge, prune}} in segment()'s option names

Cases: dense (no merging, no pruning), merge (similarity), prune (exits only), step (similarity + exits),
learned (the learned policy + exits), all unsharing by copy and halting without agreement (unshare
'copy', agree false: the engine before issue 17); then the engine's defaults, unshare 'blend' and
agree true (their options leave those out): merge_blend, prune_agree, step_blend_agree,
learned_blend_agree, and learned_cheap (the learned policy on the input pooled by 2, its trunk
truncated after feature map 3, 112-channel heads, stored as cheap.policy.heads.<S>.*; its own
thresholds, chosen last so that the other cases keep theirs). The copy cases come first and choose the thresholds as they always did, so their
outputs stay what they were; the default cases take the same thresholds where those keep their margins.
The learned policy's EfficientNet-Lite0 trunk is not stored (3.4M
parameters would be 7 MB even as float16): it is scripts/cases/random.ts randomEffnet('policy.trunk.', 4),
which this script reproduces bit for bit (mulberry32 and the sum-of-uniforms normal, all in IEEE double,
rounded to float32 as a Float32Array does), and the test rebuilds that model in memory.

Every decision the engine makes in float32 is kept away from its threshold here (window scores,
confidences, the order of the top-k context tokens and, with agreement, every exit label's lead over
the runner-up), so float rounding cannot flip one; the script picks thresholds that satisfy this and
fails if it cannot. It also fails unless blending changes some superpatch's logits and agreement stops
some confident token that would halt without it.

  /usr/bin/python3 scripts/make_step_fixture.py [--out test/fixtures/step-small]
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.dont_write_bytecode = True  # no scripts/__pycache__ in the working tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export import export_tensors  # noqa: E402
from step_common import write_safetensors  # noqa: E402
from step_model import StepSeg, make_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCORE_MARGIN = 1e-4   # |window score - threshold|, engine float32 error is ~1e-6
CONF_MARGIN = 1e-4    # |confidence - threshold| and gaps in the top-k order
LABEL_MARGIN = 1e-3   # top-1 minus top-2 exit logit of every row (agreement compares labels)
TRUNK_SEED = 4


# ---------------------------------------------------------------------------------------------------
# scripts/cases/random.ts, bit for bit


def mulberry32(seed, n):
    """The first n values of rng(seed): the state is a counter, so all at once (uint64 arithmetic mod 2^32)."""
    M = np.uint64(0xFFFFFFFF)
    a = (np.uint64(seed) + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x6D2B79F5)) & M
    t = a
    t = ((t ^ (t >> np.uint64(15))) * (t | np.uint64(1))) & M
    t = (t ^ ((t + (((t ^ (t >> np.uint64(7))) * (t | np.uint64(61))) & M)) & M)) & M
    return ((t ^ (t >> np.uint64(14))) & M).astype(np.float64) / 4294967296.0


class Rng:
    def __init__(self, seed):
        self.seed, self.pos = seed, 0

    def take(self, n):  # consecutive draws, as successive rand() calls
        v = mulberry32(self.seed, self.pos + n)[self.pos:]
        self.pos += n
        return v


def randn(n, rng, std):
    """randn(n, rand, std): (r1 + r2 + r3 + r4 - 2) * sqrt(3) * std, left to right, stored as float32."""
    r = rng.take(4 * n).reshape(n, 4)
    s = ((r[:, 0] + r[:, 1]) + r[:, 2]) + r[:, 3]
    return (((s - 2.0) * np.sqrt(3.0)) * std).astype(np.float32)


def random_effnet(prefix, seed, features=5):
    """randomEffnet(prefix, seed, features): {name: float32 array}."""
    rng, out = Rng(seed), {}

    def conv(name, shape):
        fan_in = shape[1] * shape[2] * shape[3]
        out[prefix + name + ".weight"] = randn(int(np.prod(shape)), rng, 1.5 / np.sqrt(float(fan_in))).reshape(shape)

    def bn(name, c):
        one = np.float64(1.0)
        out[prefix + name + ".weight"] = (one + randn(c, rng, 0.1).astype(np.float64)).astype(np.float32)
        out[prefix + name + ".bias"] = randn(c, rng, 0.1)
        out[prefix + name + ".running_mean"] = randn(c, rng, 0.1)
        out[prefix + name + ".running_var"] = (one + np.abs(randn(c, rng, 0.1).astype(np.float64))).astype(np.float32)

    conv("conv_stem", [32, 3, 3, 3])
    bn("bn1", 32)
    conv("blocks.0.0.conv_dw", [32, 1, 3, 3])
    bn("blocks.0.0.bn1", 32)
    conv("blocks.0.0.conv_pw", [16, 32, 1, 1])
    bn("blocks.0.0.bn2", 16)
    in_c = 16
    last_stage = [0, 1, 2, 4, 6][features - 1]
    for s, (repeats, k, c) in enumerate([(2, 3, 24), (2, 5, 40), (3, 3, 80), (3, 5, 112), (4, 5, 192), (1, 3, 320)]):
        if s + 1 > last_stage:
            break
        for r in range(repeats):
            b, mid = f"blocks.{s + 1}.{r}.", in_c * 6
            conv(b + "conv_pw", [mid, in_c, 1, 1])
            bn(b + "bn1", mid)
            conv(b + "conv_dw", [mid, 1, k, k])
            bn(b + "bn2", mid)
            conv(b + "conv_pwl", [c, mid, 1, 1])
            bn(b + "bn3", c)
            in_c = c
    return out


# ---------------------------------------------------------------------------------------------------


def randomize(model, gen):
    """O(1) activations through the blocks (as make_fixtures.py) and exit / final heads confident enough
    that some tokens halt; every value rounded to float16, the storage type."""
    C = model.C
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("policy."):
                continue
            shape = p.shape
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name.endswith("norm.weight"):
                v = 1 + 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)
            elif name in ("cls_token", "pos_embed"):
                v = 0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)
            elif "head.weight" in name:
                v = 3.0 / np.sqrt(C) * torch.randn(shape, generator=gen, dtype=torch.float64)
            elif name.endswith(".weight"):
                fan_in = int(np.prod(shape[1:]))
                v = torch.randn(shape, generator=gen, dtype=torch.float64) / np.sqrt(fan_in)
            else:
                v = 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)
            p.copy_(v.to(torch.float16).to(torch.float64))


def demo_images():
    from PIL import Image
    im = Image.open(os.path.join(ROOT, "assets", "demo-rocket.jpg")).convert("RGB")
    im = np.asarray(im.resize((240, 160), Image.BILINEAR))  # (160, 240, 3)
    # (y, x, h, w): 6 x 8 patches (the trained grid), 5 x 10 (resampled positions), 72 x 100 (padding)
    return [im[20:116, 40:168].copy(), im[70:150, 60:220].copy(), im[4:76, 120:220].copy()]


def centre_heads(model, heads, images):
    """Sets each level head's bias to minus the median logit over the images' windows, so that some
    windows merge and some do not."""
    scores = [model.infer(im, {"policy": "learned", "levels": [4, 2], "thresholds": [2, 2]}, None,
                          return_scores=True)["scores"] for im in images]
    for li, s in enumerate((4, 2)):
        p = np.concatenate([sc[li].ravel() for sc in scores])
        logit = np.log(p / (1 - p))
        heads[f"policy.heads.{s}.bias"] = torch.tensor([-float(np.median(logit))], dtype=torch.float64).float().double()
    model.load_engine_weights(heads, strict=False)


def check_scores(scores, thresholds):
    return all(np.min(np.abs(s.astype(np.float64) - t)) > SCORE_MARGIN for s, t in zip(scores, thresholds) if s.size)


def check_halting(confidences, threshold, top_k, agree=False):
    """Every confidence away from the threshold, and within each class the candidates' order around the
    top-k cut unambiguous; with agreement every row's label clear of the runner-up (its neighbours'
    halting reads it)."""
    for info in confidences.values():
        conf = np.array([c for c, _, _, _, _ in info], np.float64)
        if conf.size and np.min(np.abs(conf - threshold)) <= CONF_MARGIN:
            return False
        if agree and info and min(g for _, _, _, _, g in info) <= LABEL_MARGIN:
            return False
        for cls in {k for _, _, k, _, _ in info}:
            c = sorted((x for x, _, k, ok, _ in info if k == cls and x >= threshold and ok), reverse=True)
            if len(c) > top_k and c[top_k - 1] - c[top_k] <= CONF_MARGIN * 0.1:
                return False
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "test", "fixtures", "step-small"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    images = demo_images()
    gen = torch.Generator().manual_seed(20250)
    keep_top_k = 2

    cfg = make_config(embed_dim=64, depth=4, num_heads=2, img_size=(96, 128), input_size=128, exit_layers=[1, 2],
                      prune_threshold=0.9, keep_top_k=keep_top_k, merge_policy="similarity",
                      merge_levels=[4, 2], merge_thresholds=[0.5, 0.5],
                      note="parity fixture: random weights (scripts/make_step_fixture.py)")
    model = StepSeg(cfg).double().eval()
    randomize(model, gen)

    # The learned-policy twin: the same ViT, the random.ts trunk and random heads for windows 4 and 2.
    lcfg = json.loads(json.dumps(cfg))
    lcfg["merge"] = {"policy": "learned", "levels": [4, 2], "thresholds": [0.5, 0.5], "head_outputs": 1}

    def policy_twin(merge_extra, features, channels):
        """-> (StepSeg with the learned policy, its heads): randomEffnet's trunk (its first `features`
        feature maps) and random heads over `channels`, centred on the images."""
        c = json.loads(json.dumps(lcfg))
        c["merge"].update(merge_extra)
        m = StepSeg(c).double().eval()
        trunk = {k: torch.from_numpy(v.astype(np.float64)) for k, v in random_effnet("policy.trunk.", TRUNK_SEED, features).items()}
        heads = {}
        for s in (4, 2):
            heads[f"policy.heads.{s}.weight"] = (0.05 * torch.randn(1, channels, generator=gen, dtype=torch.float64)).float().double()
            heads[f"policy.heads.{s}.bias"] = torch.zeros(1, dtype=torch.float64)
        m.load_engine_weights({**model.engine_state_dict(), **trunk, **heads})
        m.eval()
        centre_heads(m, heads, images)
        return m, heads

    learned, heads = policy_twin({}, 5, 320)
    # The cheap learned policy: the input average-pooled by 2, the trunk truncated after feature map 3
    # (stride 16, 112 channels; randomEffnet's first 4 feature maps), heads on that map. Drawn after
    # the one above, so the other cases keep their weights.
    cheap, cheads = policy_twin({"policy_pool": 2, "policy_feature": 3}, 4, 112)

    def case_table(sim_thr, learned_thr, prune_thr, defaults):
        """The copy / no-agreement cases (unshare and agree given), or the engine's defaults (left out:
        StepSeg.infer's defaults are the engine's, blend and agree)."""
        old = {} if defaults else {"unshare": "copy"}
        merge_sim = {"policy": "similarity", "levels": [4, 2], "thresholds": sim_thr, "color_tau": 16.0, "texture_tau": 32.0, **old}
        merge_learned = {"policy": "learned", "levels": [4, 2], "thresholds": learned_thr, **old}
        prune = {"exit_layers": [1, 2], "threshold": prune_thr, "keep_top_k": keep_top_k, **({} if defaults else {"agree": False})}
        if not defaults:
            return {"dense": (model, None, None), "merge": (model, merge_sim, None), "prune": (model, None, prune),
                    "step": (model, merge_sim, prune), "learned": (learned, merge_learned, prune)}
        return {"merge_blend": (model, merge_sim, None), "prune_agree": (model, None, prune),
                "step_blend_agree": (model, merge_sim, prune), "learned_blend_agree": (learned, merge_learned, prune)}

    def run_all(sim_thr, learned_thr, prune_thr, defaults=False):
        cases = case_table(sim_thr, learned_thr, prune_thr, defaults)
        results = {}
        for i, im in enumerate(images):
            for name, (m, mg, pr) in cases.items():
                r = m.infer(im, mg, pr, return_scores=True)
                if mg and not check_scores(r["scores"], mg["thresholds"]):
                    return None, f"{name}: a window score sits on a threshold"
                if pr and not check_halting(r["confidences"], pr["threshold"], keep_top_k, pr.get("agree", True)):
                    return None, f"{name}: a confidence sits on the threshold, the top-k order is tight or a label is"
                results[(i, name)] = r
        return (cases, results), None

    found = None
    tried = []
    for prune_thr in (0.6, 0.65, 0.7, 0.55, 0.75, 0.5, 0.8):
        for sim_thr, learned_thr in (([0.55, 0.45], [0.52, 0.48]), ([0.6, 0.5], [0.55, 0.5]), ([0.5, 0.4], [0.5, 0.45])):
            tried.append((sim_thr, learned_thr, prune_thr))
            found, why = run_all(sim_thr, learned_thr, prune_thr)
            if found:
                break
            print("retry:", sim_thr, learned_thr, prune_thr, why)
        if found:
            break
    if not found:
        raise SystemExit("no thresholds with safe margins")
    cases, results = found
    # The default cases: the same thresholds first, else the search's order.
    step_thr = (cases["step"][1]["thresholds"], cases["learned"][1]["thresholds"], cases["step"][2]["threshold"])
    found = None
    for thr in [step_thr] + [t for t in tried if t != step_thr]:
        found, why = run_all(*thr, defaults=True)
        if found:
            break
        print("retry (defaults):", *thr, why)
    if not found:
        raise SystemExit("no thresholds with safe margins for the default cases")
    cases.update(found[0])
    results.update(found[1])
    # The cheap policy with the engine's defaults: its own thresholds, the prune threshold of the rest.
    prune_thr = cases["step"][2]["threshold"]
    found = None
    for learned_thr in ([0.52, 0.48], [0.55, 0.5], [0.5, 0.45], [0.53, 0.47], [0.51, 0.49]):
        merge_cheap = {"policy": "learned", "levels": [4, 2], "thresholds": learned_thr}
        prune = {"exit_layers": [1, 2], "threshold": prune_thr, "keep_top_k": keep_top_k}
        rs = {}
        for i, im in enumerate(images):
            r = cheap.infer(im, merge_cheap, prune, return_scores=True)
            if not check_scores(r["scores"], learned_thr) or not check_halting(r["confidences"], prune_thr, keep_top_k, True):
                print("retry (cheap):", learned_thr)
                break
            rs[(i, "learned_cheap")] = r
        else:
            found = rs
            break
    if not found:
        raise SystemExit("no thresholds with safe margins for the cheap policy")
    cases["learned_cheap"] = (cheap, merge_cheap, prune)
    results.update(found)

    # Something must happen in every case, or the parity test checks nothing.
    for (i, name), r in results.items():
        merged = int((r["size"] > 1).sum())
        halted = {l: int((r["exit_layer"] == l).sum()) for l in (1, 2)}
        print(f"image {i} {images[i].shape[:2]} {name:19s} tokens {len(r['rects']):3d}  merged patches {merged:3d}  "
              f"halted at 1: {halted[1]:3d} at 2: {halted[2]:3d}  blocked {int((r['blocked'] > 0).sum()):3d}")
    for name in ("merge", "step", "learned", "merge_blend", "step_blend_agree", "learned_blend_agree", "learned_cheap"):
        assert any((results[(i, name)]["size"] > 1).any() for i in range(len(images))), f"{name}: nothing merged"
        assert any((results[(i, name)]["size"] == 1).any() for i in range(len(images))), f"{name}: everything merged"
    for name in ("prune", "step", "learned", "prune_agree", "step_blend_agree", "learned_blend_agree", "learned_cheap"):
        for l in (1, 2):
            assert any((results[(i, name)]["exit_layer"] == l).any() for i in range(len(images))), f"{name}: none halt at {l}"
        assert any((results[(i, name)]["exit_layer"] == 4).any() for i in range(len(images))), f"{name}: all halt"
    # Blending and agreement make a difference: against each case run by copy / without agreement.
    for name, (m, mg, pr) in cases.items():
        blend, agree = bool(mg) and mg.get("unshare", "blend") == "blend", bool(pr) and pr.get("agree", True)
        if not (blend or agree):
            continue
        changed = stopped = 0
        for i, im in enumerate(images):
            r = results[(i, name)]
            if blend:
                c = m.infer(im, {**mg, "unshare": "copy"}, pr)
                assert (c["index"] == r["index"]).all() and (c["exit_layer"] == r["exit_layer"]).all()
                d = (r["logits"] - c["logits"]).abs().amax(0).cpu().numpy().ravel()  # (gh * gw)
                assert (d[r["size"] == 1] == 0).all(), f"{name}: blending changed a single patch"
                changed += int((d > 1e-2).sum())
            if agree:
                n = m.infer(im, mg, {**pr, "agree": False})
                stopped += int(((r["blocked"] == 1) & (n["exit_layer"] == 1) & (r["exit_layer"] != 1)).sum())
        print(f"{name:19s} patches changed by blending {changed:3d}  patches whose token halts at exit 1 only without agreement, stopped by it {stopped:3d}")
        assert not blend or changed, f"{name}: blending changes nothing"
        assert not agree or stopped, f"{name}: agreement stops no token that would halt at exit 1"

    # Write: the model (similarity + prune defaults of the step case), the reference.
    cfg["merge"]["thresholds"] = cases["step"][1]["thresholds"]
    cfg["prune"]["threshold"] = cases["step"][2]["threshold"]
    os.makedirs(a.out, exist_ok=True)
    export_tensors(model.engine_state_dict(), cfg, a.out, "F16")
    ref = {}
    for i, im in enumerate(images):
        ref[f"image_{i}"] = ("U8", torch.from_numpy(im))
    for (i, name), r in results.items():
        ref[f"{i}.{name}.logits"] = ("F32", r["logits"])
        pr = cases[name][2]
        for key in ("index", "size", "exit_layer") + (("blocked",) if pr and pr.get("agree", True) else ()):
            ref[f"{i}.{name}.{key}"] = ("F32", torch.from_numpy(r[key].astype(np.float32)))
    for k, v in heads.items():
        ref[k] = ("F32", v)
    for k, v in cheads.items():
        ref["cheap." + k] = ("F32", v)

    def js_merge(m):
        if not m:
            return False
        out = {"policy": m["policy"], "levels": m["levels"], "thresholds": m["thresholds"]}
        if m["policy"] == "similarity":
            out.update(colorTau=m["color_tau"], textureTau=m["texture_tau"])
        if "unshare" in m:
            out["unshare"] = m["unshare"]
        return out

    def js_prune(p):
        if not p:
            return False
        out = {"exitLayers": p["exit_layers"], "threshold": p["threshold"], "keepTopK": p["keep_top_k"]}
        if "agree" in p:
            out["agree"] = p["agree"]
        return out

    meta = {
        "cases": json.dumps({n: {"merge": js_merge(mg), "prune": js_prune(pr)} for n, (_, mg, pr) in cases.items()}),
        "images": str(len(images)),
        "trunk": json.dumps({"helper": "randomEffnet", "prefix": "policy.trunk.", "seed": TRUNK_SEED}),
        "cheap": json.dumps({"features": 4, "policy_pool": 2, "policy_feature": 3, "heads": "cheap.policy.heads.*"}),
        "note": "StepSeg.infer (scripts/step_model.py) in float64 from the float16 weights, stored as float32",
    }
    write_safetensors(os.path.join(a.out, "reference.safetensors"), ref, meta)
    sizes = {f: os.path.getsize(os.path.join(a.out, f)) for f in os.listdir(a.out)}
    print("wrote", a.out, sizes)


if __name__ == "__main__":
    main()
