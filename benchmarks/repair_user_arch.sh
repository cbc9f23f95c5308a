#!/usr/bin/env bash
# `onp repair` end to end on CIFAR-10 with a model whose architecture exists only in a user's file
# (examples/custom_net.py): backdoor it with BadNets (10%, target 2: not the zoo's 0), export 500 clean
# training images as PNG class folders, repair it knowing nothing but the file, the weights and the folder,
# then measure both models on the test set with the trigger (only after the repair).
# Writes docs/results/repair_user_arch.md.
# Usage: benchmarks/repair_user_arch.sh [EPOCHS]   (THREADS=N to limit the cores, TARGET=K for another target)
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${1:-10}
TARGET=${TARGET:-2}
ONP=${ONP:-.venv/bin/onp}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/user-arch}
ARCH=examples/custom_net.py:build
ROOT=${CIFAR_ROOT:-../shared/data/cifar10}
T=${THREADS:+--threads $THREADS}
mkdir -p "$OUT"
[ -f "$OUT/attacked/model.json" ] || $ONP attack --dataset cifar10 --data-root "$ROOT" --model "$ARCH" \
  --epochs "$EPOCHS" --attack badnets --poison-rate 0.1 --target "$TARGET" --seed 0 $T --out "$OUT/attacked"
[ -d "$OUT/clean" ] || $PY benchmarks/export_clean.py --data-root "$ROOT" --size 500 --out "$OUT/clean"
[ -f "$OUT/repaired/model.json" ] || $ONP repair --arch "$ARCH" --weights "$OUT/attacked/model.safetensors" \
  --clean "$OUT/clean" $T --out "$OUT/repaired"
$ONP eval "$OUT/attacked" --arch "$ARCH" $T --json > "$OUT/before.json"
$ONP eval "$OUT/repaired" --arch "$ARCH" --trigger-from "$OUT/attacked" $T --json > "$OUT/after.json"
$PY - "$OUT" "$EPOCHS" "$TARGET" <<'PY'
import json, sys
from pathlib import Path
out, epochs, target = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
(before,), (after,) = (json.loads((out / f).read_text()) for f in ("before.json", "after.json"))
rep = json.loads((out / "repaired" / "report.json").read_text())
pct = lambda v: f"{100 * v:.2f}"
text = f"""# `onp repair` on a user's own architecture

The model's architecture exists only in [`examples/custom_net.py`](../../examples/custom_net.py) (a stem, two
residual stages with projection shortcuts, a hidden linear layer; not in the registry). It was backdoored with
BadNets on CIFAR-10 (10% poison, target {target}, {epochs} epochs), then repaired by `onp repair`, which was
given only the file, the weights and a folder of 500 clean training images (50 per class, PNG). The test set and
the trigger were used only afterwards, by `onp eval`.

| model | ACC % | ASR % | RA % |
|---|---|---|---|
| backdoored | {pct(before['clean_acc'])} | {pct(before['asr'])} | {pct(before['ra'])} |
| after `onp repair` | {pct(after['clean_acc'])} | {pct(after['asr'])} | {pct(after['ra'])} |

ONP pruned {rep['num_pruned']} of {rep['num_neurons']} neurons in {rep['wall_time']:.0f} s
(held-out clean accuracy on the defender's images {pct(rep['clean_acc_defense_val'])}%); the search curve is
`{out}/repaired/search_curve.png`.

Made by `benchmarks/repair_user_arch.sh {epochs}`, which runs:

```bash
onp attack --dataset cifar10 --data-root ../shared/data/cifar10 --model examples/custom_net.py:build \\
  --epochs {epochs} --attack badnets --poison-rate 0.1 --target {target} --seed 0 --out {out}/attacked
python benchmarks/export_clean.py --data-root ../shared/data/cifar10 --size 500 --out {out}/clean
onp repair --arch examples/custom_net.py:build --weights {out}/attacked/model.safetensors \\
  --clean {out}/clean --out {out}/repaired
onp eval {out}/attacked --arch examples/custom_net.py:build
onp eval {out}/repaired --arch examples/custom_net.py:build --trigger-from {out}/attacked
```
"""
Path("docs/results").mkdir(parents=True, exist_ok=True)
Path("docs/results/repair_user_arch.md").write_text(text)
print(text)
PY
