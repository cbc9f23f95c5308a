"""The committed evaluation set (issue #19) is what its config says: every model trained as specified, and every
row a cell of its grid, made by the frozen defense code on the held-out pool."""

from __future__ import annotations

import json
from pathlib import Path

from onp.bench.grid import expand, load_bench
from onp.bench.runner import find_in_zoo, read_results, refuse_stale_rows
from onp.utils.runtime import code_changes

ROOT = Path(__file__).resolve().parents[2]
CFG = load_bench(ROOT / "benchmarks" / "cifar10_eval.yaml")
RESULTS = ROOT / "docs" / "results" / "cifar10_eval.jsonl"


def test_every_evaluation_model_is_trained_with_its_own_target_seed_and_pool() -> None:
    models, _ = expand(CFG)
    assert len(models) == 10
    for m in models:
        found = find_in_zoo(ROOT / CFG.zoo, m.run)
        assert found is not None, m.id
        meta = json.loads((found / "model.json").read_text())
        assert meta["attack"]["target_label"] == m.run.attack.target_label != 0, m.id
        assert meta["config"]["seed"] == 1 and meta["config"]["holdout"] == 1000, m.id
    assert sorted({m.run.attack.target_label for m in models}) == [1, 2, 4, 6, 7, 9]


def test_every_evaluation_row_is_a_cell_made_by_the_frozen_code() -> None:
    assert CFG.frozen
    _, cells = expand(CFG)
    by_id = {c.id: c for c in cells}
    rows = {r["id"]: r for r in read_results(RESULTS)}
    assert rows and set(rows) <= set(by_id)
    assert all(r["clean_source"] == "pool" for r in rows.values())
    revisions = {r["versions"]["git"] for r in rows.values()}
    for rev in revisions:
        assert not rev.endswith("-dirty") and code_changes(CFG.frozen, rev) == [], rev
    refuse_stale_rows([by_id[i] for i in rows], rows, RESULTS)  # and with the settings today's defaults give
