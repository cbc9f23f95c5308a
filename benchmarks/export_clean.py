"""Write a class-balanced clean subset of a dataset's training split as PNG files in class subfolders, the
folder `onp repair --clean` takes. The subset is the one `onp defend` and the benchmark draw for the same size
and seed. Folders are named `<index>_<class>` so that their sorted order is the model's output order.

    .venv/bin/python benchmarks/export_clean.py --data-root ../shared/data/cifar10 --size 500 --out clean/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from onp.data import create_dataset, defense_split
from onp.utils.io import atomic_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--data-root", default="../shared/data/cifar10")
    ap.add_argument("--size", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    train = create_dataset(args.dataset, args.data_root, "train")
    idx = defense_split(train.labels, train.num_classes, size=args.size, seed=args.seed)
    width = len(str(train.num_classes - 1))
    with atomic_dir(args.out) as tmp:
        for n, i in enumerate(idx.tolist()):
            y = int(train.labels[i])
            folder = Path(tmp) / f"{y:0{width}d}_{train.classes[y]}"
            folder.mkdir(exist_ok=True)
            arr = train.images[i].permute(1, 2, 0).numpy()
            Image.fromarray(arr.squeeze(2) if arr.shape[2] == 1 else arr).save(folder / f"{i:05d}.png")
    print(f"wrote {len(idx)} images of {train.num_classes} classes to {args.out}")


if __name__ == "__main__":
    main()
