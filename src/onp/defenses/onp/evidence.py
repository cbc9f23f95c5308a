"""ONP's evidence (the probes and the per-neuron feature matrix, RNP's masks among its columns),
cached on disk.

ONP and its two ablations gather the same evidence from the same model and clean images and differ only in how
they rank neurons. With a cache directory (the benchmark passes one), the first of them to run stores the
evidence and the others load it, so the ablations rank exactly the features ONP ranked. The key hashes the
model's weights, the clean images, the seed, the evidence parameters and :data:`VERSION`; the files are
safetensors and JSON, so loading runs no code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from onp.defenses.onp.probes import Probe, ProbeSet
from onp.errors import OnpError
from onp.utils.io import load_tensors, read_json, save_tensors, stable_hash, write_json

log = logging.getLogger(__name__)

VERSION = 2
"""Bump when the evidence code changes, so that stale cache entries are not reused."""


@dataclass
class Evidence:
    probes: ProbeSet
    feats: Tensor
    names: list[str]
    info: dict[str, Any]
    timings: dict[str, float]


def evidence_key(model: nn.Module, x: Tensor, y: Tensor, params: dict[str, Any]) -> str:
    """A hash of everything the evidence depends on."""
    state = sorted(model.state_dict().items())
    return stable_hash({"version": VERSION, "params": params, "state": [k for k, _ in state]},
                       [v for _, v in state] + [x, y], length=20)


def save_evidence(cache: Path, key: str, ev: Evidence) -> None:
    tensors = {"feats": ev.feats}
    probes = []
    for i, p in enumerate(ev.probes.probes):
        fields = [f for f in ("delta", "mask", "pattern") if getattr(p, f) is not None]
        tensors.update({f"probe{i}.{f}": getattr(p, f) for f in fields})
        probes.append({"kind": p.kind, "target": p.target, "strength": p.strength, "fields": fields})
    save_tensors(cache / f"onp-evidence-{key}.safetensors", tensors)
    # the JSON is written last: its presence marks a complete entry
    write_json(cache / f"onp-evidence-{key}.json", {
        "version": VERSION, "names": ev.names, "info": ev.info, "timings": ev.timings,
        "probes": {"target": ev.probes.target, "rates": ev.probes.rates, "probes": probes}})


def load_evidence(cache: Path, key: str) -> Evidence | None:
    meta_path, tensor_path = cache / f"onp-evidence-{key}.json", cache / f"onp-evidence-{key}.safetensors"
    if not meta_path.is_file() or not tensor_path.is_file():
        return None
    try:
        meta, t = read_json(meta_path), load_tensors(tensor_path)
        probes = [Probe(p["kind"], int(p["target"]), strength=float(p["strength"]),
                        **{f: t[f"probe{i}.{f}"] for f in p["fields"]})
                  for i, p in enumerate(meta["probes"]["probes"])]
        ps = ProbeSet(int(meta["probes"]["target"]), probes, meta["probes"]["rates"])
        return Evidence(ps, t["feats"], meta["names"], meta["info"], meta["timings"])
    except (OnpError, KeyError, TypeError, ValueError) as e:  # a torn or foreign entry: recompute
        log.warning("ignoring the evidence cache entry %s: %s", meta_path, e)
        return None
