#!/usr/bin/env python3
"""pack_camvid.py: what train.py needs on a GPU machine, in one folder small enough to carry there
(the device tool carries at most 64 MiB with the working tree, which is about 12 MiB itself).

  train/, val/            the images as JPEG, quality 92, no chroma subsampling: 31.5 MiB for the
                          468 images (the PNGs are 119 MB); PSNR about 43 dB against the PNGs
  trainannot/, valannot/  the label PNGs as they are (lossless, 3.8 MB)
  deit_tiny_patch16_224.f16.safetensors   the DeiT-Tiny start (../shared/weights) as float16: 11 MiB
The layout is the one train.py reads (--data <out> --init <out>/deit_tiny_patch16_224.f16.safetensors).
The test split is left behind (held back for independent evaluation).

  /usr/bin/python3 scripts/pack_camvid.py [--src ../shared/data/camvid] [--out .camvid] [--quality 92]
Put the output folder in .git/info/exclude and name it in the device tool's carry list.
"""
import argparse
import os
import shutil
import sys

from PIL import Image

sys.dont_write_bytecode = True  # no scripts/__pycache__ in the working tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_common import read_safetensors, write_safetensors  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default=os.path.join(ROOT, "..", "shared", "data", "camvid"))
    ap.add_argument("--out", default=os.path.join(ROOT, ".camvid"))
    ap.add_argument("--quality", type=int, default=92)
    ap.add_argument("--deit", default=os.path.join(ROOT, "..", "shared", "weights", "deit_tiny_patch16_224.safetensors"))
    a = ap.parse_args()
    total = 0
    for split in ("train", "val"):
        for d in (split, split + "annot"):
            os.makedirs(os.path.join(a.out, d), exist_ok=True)
        for f in sorted(os.listdir(os.path.join(a.src, split + "annot"))):
            stem = os.path.splitext(f)[0]
            img = Image.open(os.path.join(a.src, split, f)).convert("RGB")
            dst = os.path.join(a.out, split, stem + ".jpg")
            img.save(dst, quality=a.quality, subsampling=0)
            lab = os.path.join(a.out, split + "annot", f)
            shutil.copyfile(os.path.join(a.src, split + "annot", f), lab)
            total += os.path.getsize(dst) + os.path.getsize(lab)
    if a.deit and os.path.exists(a.deit):
        tensors, meta = read_safetensors(a.deit)
        dst = os.path.join(a.out, "deit_tiny_patch16_224.f16.safetensors")
        write_safetensors(dst, tensors, meta, dtype="F16")
        total += os.path.getsize(dst)
    print(f"wrote {a.out}: {total / 2 ** 20:.1f} MiB")


if __name__ == "__main__":
    main()
