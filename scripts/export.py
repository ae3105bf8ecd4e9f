#!/usr/bin/env python3
"""export.py: writes a StepSeg model in the engine's format (README, "Bringing your own model").

Output, by the name given to --out:
  DIR              DIR/config.json + DIR/model.safetensors
  FILE.safetensors one file, the config as a JSON string in __metadata__.config
Weights are float16 by default (--dtype f32 keeps float32). A tensor that float16 cannot hold (a value
beyond +-65504) stays float32, as do BatchNorm running statistics (tiny, and their variances can be
small enough to lose most of their bits as float16 subnormals); the engine reads both per tensor.

Inputs: one or more checkpoints, each a train.py checkpoint (.pt: {"config", "state_dict"}) or a
safetensors file with the engine's names (its __metadata__.config, if any, is the config). Several
inputs are merged, so a checkpoint split in parts (train.py writes the ViT and the policy apart, to
keep each file small) exports as one model. The config's defaults can be overridden:
  --input-size 960 --merge-policy learned --merge-thresholds 0.9 0.8 0.7 --prune-threshold 0.95
  --keep-top-k 5 --note "..."

  /usr/bin/python3 scripts/export.py runs/camvid/best.pt --out weights/default
  /usr/bin/python3 scripts/export.py best-vit.safetensors best-policy.safetensors --out model.safetensors
"""
import argparse
import json
import os
import sys

import torch

sys.dont_write_bytecode = True  # no scripts/__pycache__ in the working tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_common import read_safetensors, write_safetensors  # noqa: E402
from step_model import StepSeg  # noqa: E402

F16_MAX = 65504.0


def storage_dtype(name, t, dtype):
    if dtype == "F32" or not t.is_floating_point():
        return "F32"
    if name.endswith(("running_mean", "running_var")):
        return "F32"
    if t.numel() and t.abs().max().item() > F16_MAX:
        print(f"export: {name} exceeds the float16 range, kept as float32", file=sys.stderr)
        return "F32"
    return "F16"


def export_tensors(tensors, cfg, out, dtype="F16"):
    """tensors: {engine name: tensor}; cfg: the engine config dict; out: a directory or a .safetensors path."""
    tensors = {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
    # Check the names and shapes against the model the config describes before writing anything.
    ref = StepSeg(cfg).engine_state_dict()
    missing = sorted(set(ref) - set(tensors))
    unexpected = sorted(set(tensors) - set(ref))
    if missing or unexpected:
        raise SystemExit(f"export: the weights do not match the config: missing {missing[:6]}, unexpected {unexpected[:6]}")
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(ref[k].shape):
            raise SystemExit(f"export: {k} has shape {tuple(v.shape)} but the config needs {tuple(ref[k].shape)}")
        if not torch.isfinite(v.float()).all():
            raise SystemExit(f"export: {k} holds NaN or infinity")
    # Engine order: backbone, heads, exits, policy (any order loads; this one reads well in `info`).
    items = {k: (storage_dtype(k, tensors[k], dtype), tensors[k]) for k in ref}
    if out.endswith(".safetensors"):
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        write_safetensors(out, items, {"config": json.dumps(cfg)})
        return out
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
        f.write("\n")
    path = os.path.join(out, "model.safetensors")
    write_safetensors(path, items)
    return path


def load_checkpoints(paths):
    """-> (tensors, config, policy) merged over the inputs (later inputs win; the first config found is
    used; policy: the __metadata__.policy of a train_policy.py file, or None)."""
    tensors, cfg, policy = {}, None, None
    for p in paths:
        if p.endswith(".pt") or p.endswith(".pth"):
            ck = torch.load(p, map_location="cpu")
            tensors.update(ck["state_dict"])
            cfg = cfg or ck.get("config")
        else:
            t, meta = read_safetensors(p)
            tensors.update(t)
            if "policy" in meta:
                policy = json.loads(meta["policy"])
            if cfg is None and "config" in meta:
                cfg = json.loads(meta["config"])
            elif cfg is None and os.path.exists(os.path.join(os.path.dirname(p), "config.json")):
                with open(os.path.join(os.path.dirname(p), "config.json")) as f:
                    cfg = json.load(f)
    if cfg is None:
        raise SystemExit("export: no config in the inputs (a .pt with 'config' or a safetensors __metadata__.config)")
    return tensors, cfg, policy


def apply_overrides(cfg, a, policy=None):
    cfg = json.loads(json.dumps(cfg))
    for k in ("untrained",):
        cfg.pop(k, None)
    if a.input_size:
        cfg["input_size"] = a.input_size
    m = cfg.get("merge")
    if a.merge_policy == "off":
        cfg["merge"] = False
    elif a.merge_policy or a.merge_thresholds:
        if not m:
            raise SystemExit("export: the config has no merge section to change")
        if a.merge_policy:
            if a.merge_policy == "similarity" and m.get("policy") == "learned":
                raise SystemExit("export: switching a learned policy to similarity would leave policy.* weights unused; "
                                 "use --merge-policy off or keep learned")
            was_learned = m.get("policy") == "learned"
            m["policy"] = a.merge_policy
            if a.merge_policy == "learned" and policy:  # a train_policy.py file: its levels, shape, thresholds
                m["levels"], m["head_outputs"] = policy["levels"], policy.get("outputs", 1)
                m["policy_pool"], m["policy_feature"] = policy.get("pool", 1), policy.get("feature", 4)
                # a similarity config's thresholds are colour-distance scores, not the heads' probabilities
                keep = was_learned and len(m.get("thresholds", [])) == len(m["levels"])
                m["thresholds"] = m["thresholds"] if keep else policy["thresholds"]
        if a.merge_thresholds:
            if len(a.merge_thresholds) != len(m["levels"]):
                raise SystemExit(f"export: {len(m['levels'])} thresholds needed, one per level {m['levels']}")
            m["thresholds"] = a.merge_thresholds
    if a.prune_threshold is not None or a.keep_top_k is not None:
        if not cfg.get("prune"):
            raise SystemExit("export: the config has no prune section (no exit heads)")
        if a.prune_threshold is not None:
            cfg["prune"]["threshold"] = a.prune_threshold
        if a.keep_top_k is not None:
            cfg["prune"]["keep_top_k"] = a.keep_top_k
    if a.note:
        cfg["note"] = a.note
    if a.license:
        cfg["license"] = a.license
    return cfg


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="checkpoint(s): .pt from train.py or .safetensors")
    ap.add_argument("--out", required=True, help="a directory (config.json + model.safetensors) or FILE.safetensors")
    ap.add_argument("--dtype", choices=["f16", "f32"], default="f16")
    ap.add_argument("--input-size", type=int)
    ap.add_argument("--merge-policy", choices=["similarity", "learned", "off"])
    ap.add_argument("--merge-thresholds", type=float, nargs="+")
    ap.add_argument("--prune-threshold", type=float)
    ap.add_argument("--keep-top-k", type=int)
    ap.add_argument("--note")
    ap.add_argument("--license", help="the weights' terms in one line (config \"license\"; `step-seg info` prints it)")
    a = ap.parse_args()
    tensors, cfg, policy = load_checkpoints(a.inputs)
    cfg = apply_overrides(cfg, a, policy)
    path = export_tensors(tensors, cfg, a.out, "F16" if a.dtype == "f16" else "F32")
    print(f"wrote {a.out} ({os.path.getsize(path)} bytes of weights)")


if __name__ == "__main__":
    main()
