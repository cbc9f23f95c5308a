#!/usr/bin/env bash
# Train the CIFAR-10 model zoo of the CPU benchmark: a clean ResNet-18 (width 16) and one backdoored model per
# attack (10% poison, target 0), sequentially, each with its log. Models that exist already are skipped, so the
# script resumes after an interruption. Usage: benchmarks/make_zoo.sh [EPOCHS] [clean|attack ...]
# (default: clean then the eight attacks; lc, trojannn and inputaware need the clean model first).
# THREADS=1 and `taskset -c N` let two zoo processes share a 2-core machine (faster than one 2-thread process).
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${1:-25}; shift || true
ATTACKS=${*:-clean badnets blended sig bpp wanet trojannn lc inputaware}
ROOT=${CIFAR_ROOT:-../shared/data/cifar10}
ZOO=benchmarks/zoo
ONP=${ONP:-.venv/bin/onp}
THREADS=${THREADS:-}
mkdir -p "$ZOO/logs"
common=(--dataset cifar10 --data-root "$ROOT" --model resnet18 --width 16 --epochs "$EPOCHS" --seed 0 ${THREADS:+--threads "$THREADS"})
for a in $ATTACKS; do
  out="$ZOO/cifar10-resnet18w16-$a"
  [ -f "$out/model.json" ] && continue
  if [ "$a" = clean ]; then
    $ONP train "${common[@]}" --out "$out" 2> "$ZOO/logs/clean.log"
    continue
  fi
  extra=()
  # SIG hides a 20/255 sinusoid in training and triggers with 40/255 at test time (see docs/attacks.md)
  [ "$a" = sig ] && extra=(--set attack.params.test_delta=0.1568627450980392)
  $ONP attack "${common[@]}" --attack "$a" --poison-rate 0.1 --target 0 "${extra[@]}" \
    --reference "$ZOO/cifar10-resnet18w16-clean" --out "$out" 2> "$ZOO/logs/$a.log"
done
