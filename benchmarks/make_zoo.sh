#!/usr/bin/env bash
# Train the CIFAR-10 model zoo of the CPU benchmark: a clean ResNet-18 (width 16) and one backdoored model per
# attack (10% poison, target 0), sequentially, each with its log. Models that exist already are skipped, so the
# script resumes after an interruption. Usage: benchmarks/make_zoo.sh [EPOCHS] [attack ...]
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${1:-25}; shift || true
ATTACKS=${*:-badnets blended sig bpp wanet trojannn lc inputaware}
ROOT=${CIFAR_ROOT:-../shared/data/cifar10}
ZOO=benchmarks/zoo
ONP=${ONP:-.venv/bin/onp}
mkdir -p "$ZOO/logs"
common=(--dataset cifar10 --data-root "$ROOT" --model resnet18 --width 16 --epochs "$EPOCHS" --seed 0)
if [ ! -f "$ZOO/cifar10-resnet18w16-clean/model.json" ]; then
  $ONP train "${common[@]}" --out "$ZOO/cifar10-resnet18w16-clean" 2> "$ZOO/logs/clean.log"
fi
for a in $ATTACKS; do
  out="$ZOO/cifar10-resnet18w16-$a"
  [ -f "$out/model.json" ] && continue
  $ONP attack "${common[@]}" --attack "$a" --poison-rate 0.1 --target 0 \
    --reference "$ZOO/cifar10-resnet18w16-clean" --out "$out" 2> "$ZOO/logs/$a.log"
done
