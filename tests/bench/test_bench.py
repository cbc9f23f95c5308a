"""The benchmark: resumable after a kill with the same final rows, the same rows on Ray, and the report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onp.bench.grid import load_bench
from onp.bench.report import checks_table, load_checks, write_report
from onp.bench.runner import append_row, der, read_results, run_bench
from onp.errors import OnpError

TINY = """
name: tiny
data: {{name: digits}}
models: [{{name: small_cnn, width: 4}}]
attacks: [{{name: badnets, poison_rate: 0.1}}]
defenses:
  - {{name: clp, params: {{selection: bound}}}}
  - {{name: finetune, params: {{epochs: 1}}}}
train: {{epochs: 2, batch_size: 64, lr: 0.05}}
seeds: [0, 1]
defense_size: 60
zoo: {zoo}
threads: 1
curve_images: 100
"""
# what a rerun must reproduce exactly (timings, hosts and memory naturally differ)
STABLE = ("id", "clean_acc", "asr", "ra", "der", "before", "after", "num_pruned", "pruning_curve", "seed")


def stable(rows: list[dict]) -> list[dict]:
    return [{k: r.get(k) for k in STABLE} for r in sorted(rows, key=lambda r: r["id"])]


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """The tiny grid's config and the rows of one uninterrupted run."""
    d = tmp_path_factory.mktemp("bench")
    cfg_path = d / "tiny.yaml"
    cfg_path.write_text(TINY.format(zoo=d / "zoo"))
    rows = run_bench(load_bench(cfg_path), d / "uninterrupted.jsonl")
    return cfg_path, rows


@pytest.mark.slow
def test_uninterrupted_run_has_every_cell(grid: tuple[Path, list[dict]]) -> None:
    _, rows = grid
    assert len(rows) == 4
    assert {(r["defense"], r["seed"]) for r in rows} == {("clp", 0), ("clp", 1), ("finetune", 0), ("finetune", 1)}
    for r in rows:
        for k in ("clean_acc", "asr", "ra", "der", "wall_time", "peak_memory_mb", "versions", "defense_params"):
            assert k in r, k
        assert 0 <= r["der"] <= 1 and r["peak_memory_mb"] > 0
        assert r["versions"]["onp"] and "torch" in r["versions"]
        if r["defense"] == "clp":  # a pruning defense: its stop's evidence, with the chosen prefix on it
            ks = [p["k"] for p in r["selection_curve"]]
            assert ks == sorted(ks) and ks[0] == 0 and r["chosen"]["k"] in ks
            head = r["ranking_head"]  # the ranking the stop cut, as far as the curve reaches
            assert len(head) == ks[-1] == len(set(head)) and all(0 <= i < r["num_neurons"] for i in head)
        else:
            assert r["ranking_head"] is None


@pytest.mark.slow
def test_kill_then_resume_equals_uninterrupted(grid: tuple[Path, list[dict]], tmp_path: Path) -> None:
    cfg_path, reference = grid
    results = tmp_path / "killed.jsonl"
    cmd = [sys.executable, "-m", "onp.cli", "bench", str(cfg_path), "--results", str(results), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(read_results(results)) < 1:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the cell in flight dies too
    proc.wait()
    partial = read_results(results)
    assert 1 <= len(partial) < 4, "the kill should land mid-run"
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    final = read_results(results)
    assert len(final) == 4, "no cell lost, none done twice"
    assert len({r["id"] for r in final}) == 4
    assert stable(final) == stable(reference)
    # the rows finished before the kill were kept as they were, not redone
    assert [r["finished"] for r in final[: len(partial)]] == [r["finished"] for r in partial]


@pytest.mark.slow
def test_two_local_jobs_give_the_same_rows(grid: tuple[Path, list[dict]], tmp_path: Path) -> None:
    cfg_path, reference = grid
    rows = run_bench(load_bench(cfg_path), tmp_path / "jobs2.jsonl", jobs=2)
    assert stable(rows) == stable(reference)
    with pytest.raises(OnpError, match="--jobs"):
        run_bench(load_bench(cfg_path), tmp_path / "jobs0.jsonl", jobs=0)


@pytest.mark.slow
def test_a_failing_cell_is_reported_and_does_not_stop_the_others(grid: tuple[Path, list[dict]],
                                                                tmp_path: Path) -> None:
    cfg_path, reference = grid
    text = cfg_path.read_text().replace("  - {name: finetune, params: {epochs: 1}}",
                                        "  - {name: finetune, params: {epochs: 1}}\n"
                                        "  - {name: finetune, label: broken, params: {epochs: 1}}")
    broken = tmp_path / "broken.yaml"
    broken.write_text(text)
    cfg = load_bench(broken)
    cfg.defenses[-1].params["epochs"] = "oops"  # past the config's checks: a cell that fails only when it runs
    results = tmp_path / "broken.jsonl"
    with pytest.raises(OnpError, match="2 of 6 cells failed"):
        run_bench(cfg, results)
    rows = read_results(results)
    assert stable(rows) == stable(reference)  # the four good cells, as in an uninterrupted run


@pytest.mark.slow
def test_only_runs_the_matching_cells_and_they_count_for_the_whole_grid(grid: tuple[Path, list[dict]],
                                                                       tmp_path: Path) -> None:
    cfg_path, reference = grid
    results = tmp_path / "sliced.jsonl"
    rows = run_bench(load_bench(cfg_path), results, only=["*/clp-s1-*"])
    assert [(r["defense"], r["seed"]) for r in rows] == [("clp", 1)]
    rows = run_bench(load_bench(cfg_path), results)  # the rest; the slice is not redone
    assert stable(rows) == stable(reference)


def test_rows_made_with_other_settings_are_not_resumed_from(grid: tuple[Path, list[dict]], tmp_path: Path) -> None:
    """A changed default keeps a cell's id; its old row must not stand in for the new code's."""
    cfg_path, reference = grid
    results = tmp_path / "stale.jsonl"
    for r in reference:
        append_row(results, {**r, "defense_params": {**r["defense_params"], "threshold": 99.0}}
                   if r["defense"] == "clp" and r["seed"] == 1 else r)
    with pytest.raises(OnpError, match=r"1 rows of .*stale.jsonl were made with other settings than the present "
                                       r"code's, e\.g\. .*/clp-s1-\w+ \(threshold\); delete them"):
        run_bench(load_bench(cfg_path), results)
    assert stable(run_bench(load_bench(cfg_path), results, only=["*/finetune-*"])) == stable(reference), \
        "a slice without the stale row resumes"


@pytest.mark.slow
def test_a_frozen_grid_runs_only_from_its_revision(grid: tuple[Path, list[dict]], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The evaluation set's freeze: no row from code other than the frozen revision's, on disk or in the file."""
    from onp.bench import runner

    cfg_path, reference = grid
    cfg = load_bench(cfg_path, {"frozen": "f00d"})
    results = tmp_path / "frozen.jsonl"
    revs = {0: "f00d", 1: "beef"}  # the seed-1 rows come from a revision whose clp differs
    for r in reference:
        append_row(results, {**r, "versions": {**r["versions"], "git": revs[r["seed"]]}})
    changes = {("f00d", None): ["defenses/clp.py"], ("f00d", "f00d"): [], ("f00d", "beef"): ["defenses/clp.py"]}
    monkeypatch.setattr(runner, "code_changes", lambda since, until=None: changes[since, until])
    with pytest.raises(OnpError, match=r"frozen at f00d, but onp's source differs from it in defenses/clp\.py"):
        run_bench(cfg, results)
    changes["f00d", None] = []
    with pytest.raises(OnpError, match=r"2 rows of .*frozen.jsonl were not made by the frozen code \(f00d\), "
                                       r"e\.g\. .*-s1-\w+ \(beef, which differs in defenses/clp\.py\)"):
        run_bench(cfg, results)
    changes["f00d", "beef"] = []  # only the report changed between the two revisions
    assert stable(run_bench(cfg, results)) == stable(reference), "every row from the frozen code: nothing to run"
    append_row(results, {**reference[0], "versions": {"git": "f00d-dirty"}})
    with pytest.raises(OnpError, match=r"\(f00d-dirty\)"):
        run_bench(cfg, results)
    assert run_bench(cfg, results, models_only=True) == [], "models may be trained before the freeze"


@pytest.mark.slow
def test_ray_executor_gives_the_same_rows(grid: tuple[Path, list[dict]], tmp_path: Path) -> None:
    pytest.importorskip("ray")
    cfg_path, reference = grid
    rows = run_bench(load_bench(cfg_path), tmp_path / "ray.jsonl", executor="ray")
    assert stable(rows) == stable(reference)


@pytest.mark.slow
def test_report_writes_tables_and_plots(grid: tuple[Path, list[dict]], tmp_path: Path) -> None:
    cfg_path, _ = grid
    results = cfg_path.parent / "uninterrupted.jsonl"
    checks = tmp_path / "checks.yaml"
    checks.write_text("checks: [{claim: 'CLP keeps ACC above 1%', defense: clp, attack: badnets, metric: clean_acc, "
                      "above: 0.01}]\n")
    out = write_report(results, tmp_path / "report", command="onp bench tiny.yaml", checks=checks)
    md = (out / "tiny.md").read_text()
    assert "## Checks against published behaviour" in md and "| CLP keeps ACC above 1% | seed 0: " in md
    for head in ("ACC (%)", "ASR (%)", "RA (%)", "DER (%)", "wall time"):
        assert head in md
    assert "**" in md  # the best per row is marked
    assert "onp bench tiny.yaml" in md
    assert (out / "tiny.html").read_text().startswith("<!doctype html>")
    # the summary: one line per defense, its worst attack no better than its mean
    summary = md.split("## Summary per defense")[1].split("##")[0]
    lines = [ln.split(" | ") for ln in summary.splitlines() if ln.startswith("| ")][1:]
    assert [ln[0].strip("| ") for ln in lines] == ["clp", "finetune"]
    rows = read_results(results)
    for ln in lines:
        assert int(ln[1]) == sum(r["defense"] == ln[0].strip("| ") for r in rows)
        assert float(ln[4]) >= float(ln[3]) and float(ln[6]) >= float(ln[5])
    for png in ("asr_vs_acc.png", "asr_bars.png", "clean_acc_bars.png", "pruning_curves.png"):
        assert (out / f"tiny_{png}").stat().st_size > 1000, png
    assert "*Attack success per attack and defense" in md  # plots carry captions, not file names
    # BackdoorBench's leaderboard columns, one line per cell
    import csv

    table = list(csv.DictReader((out / "tiny.csv").open()))
    assert list(table[0]) == ["dataset", "model", "attack", "poisoning_ratio", "defense", "seed", "C-Acc", "ASR",
                              "R-Acc", "DER"]
    assert len(table) == len(rows) and all(0 <= float(t["C-Acc"]) <= 100 for t in table)


def test_ties_are_bold_in_every_cell_and_sig_names_its_test_amplitude() -> None:
    from onp.bench.report import aggregate, metric_table

    def row(defense: str, asr: float) -> dict:
        return {"defense": defense, "attack": {"name": "sig", "params": {"test_delta": 40 / 255}}, "seed": 0,
                "model_id": "m", "clean_acc": 0.9, "asr": asr, "ra": 0.5, "der": 0.9, "wall_time": 1.0,
                "before": {"clean_acc": 0.9, "asr": 0.9, "ra": 0.1}}

    table = metric_table(aggregate([row("a", 0.01001), row("b", 0.01003), row("c", 0.5)]), "asr", "ASR", min)
    assert table[1][0] == "sig (test amplitude 40/255)"
    assert table[1][2:] == ["**1.00**", "**1.00**", "50.00"]


def test_torn_line_is_ignored_and_append_is_whole(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b", "x": ')  # a write torn by a crash of an older version
    assert [r["id"] for r in read_results(path)] == ["a"]
    append_row(path, {"id": "c"})
    assert [r["id"] for r in read_results(path)] == ["a", "c"]
    assert not list(tmp_path.glob(".*tmp"))


def test_der() -> None:
    assert der({"asr": 1.0, "clean_acc": 0.9}, {"asr": 0.0, "clean_acc": 0.9}) == 1.0
    assert der({"asr": 1.0, "clean_acc": 0.9}, {"asr": 1.0, "clean_acc": 0.9}) == 0.5
    assert der({"asr": 0.5, "clean_acc": 0.9}, {"asr": 0.1, "clean_acc": 0.8}) == pytest.approx(0.65)


def test_bad_config_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ndefenses: [{name: nope}]\n")
    with pytest.raises(OnpError, match="unknown defense 'nope'"):
        load_bench(p)
    p.write_text("name: x\ndefenses: [{name: clp, params: {nonsense: 1}}]\n")
    with pytest.raises(OnpError, match="defense 'clp' has no parameter 'nonsense'"):
        load_bench(p)
    p.write_text("name: x\ndefenses: []\n")
    with pytest.raises(OnpError, match="no defenses"):
        load_bench(p)
    p.write_text("name: x\nbogus: 1\ndefenses: [{name: clp}]\n")
    with pytest.raises(OnpError, match="unknown config key 'bogus'"):
        load_bench(p)
    with pytest.raises(OnpError, match="unknown executor"):
        p.write_text("name: x\ndefenses: [{name: clp}]\n")
        run_bench(load_bench(p), tmp_path / "r.jsonl", executor="slurm")
    p.write_text("name: x\ndefenses: [{name: onp, params: {oracle_target: 0}}]\n")
    with pytest.raises(OnpError, match="onp sets oracle_target.*may not know it"):
        load_bench(p)


def _row(defense: str, attack: str, seed: int, asr: float) -> dict:
    return {"defense": defense, "attack": {"name": attack}, "seed": seed, "asr": asr}


def test_checks_hold_each_seed_against_the_bar(tmp_path: Path) -> None:
    p = tmp_path / "checks.yaml"
    p.write_text("checks:\n"
                 "  - {claim: 'A below 5%', defense: a, attack: x, metric: asr, below: 0.05}\n"
                 "  - {claim: 'B below 5%', defense: b, attack: x, metric: asr, below: 0.05}\n"
                 "  - {claim: 'C below 5%', defense: c, attack: x, metric: asr, below: 0.05}\n"
                 "  - {claim: 'D above 50%', defense: a, attack: y, metric: asr, above: 0.5}\n"
                 "  - {claim: 'E needs no data', evidence: 'a test'}\n")
    rows = [_row("a", "x", 1, 0.01), _row("a", "x", 0, 0.02), _row("b", "x", 0, 0.01), _row("b", "x", 1, 0.9),
            _row("a", "y", 0, 0.1)]
    table = checks_table(rows, load_checks(p))
    assert table[1:] == [["A below 5%", "seed 0: 2.00, seed 1: 1.00", "yes"],
                         ["B below 5%", "seed 0: 1.00, seed 1: 90.00", "at 1 of 2 seeds"],
                         ["C below 5%", "not run", "-"],
                         ["D above 50%", "seed 0: 10.00", "no"],
                         ["E needs no data", "a test", "see there"]]


@pytest.mark.parametrize("text, message", [
    ("checks: []\n", "non-empty 'checks:' list"),
    ("checks: [{defense: a}]\n", "needs a 'claim'"),
    ("checks: [{claim: c, defense: a, attack: x, metric: asr, below: 0.1, colour: red}]\n", "unknown key 'colour'"),
    ("checks: [{claim: c, defense: a, attack: x, metric: speed, below: 0.1}]\n", "metric"),
    ("checks: [{claim: c, defense: a, attack: x, metric: asr}]\n", "'below' or 'above'"),
    ("checks: [{claim: c, defense: a, attack: x, metric: asr, below: 0.1, above: 0.0}]\n", "'below' or 'above'"),
    ("checks: [unclosed\n", "cannot read checks"),
])
def test_bad_checks_are_refused(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "checks.yaml"
    p.write_text(text)
    with pytest.raises(OnpError, match=message):
        load_checks(p)


def test_shipped_checks_load() -> None:
    assert load_checks(Path(__file__).resolve().parents[2] / "benchmarks" / "checks" / "cifar10_cpu.yaml")


def test_report_of_empty_results_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "r.jsonl").write_text("")
    with pytest.raises(OnpError, match="no finished"):
        write_report(tmp_path / "r.jsonl", tmp_path / "out")


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "benchmarks").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_configs_load_and_expand(path: Path) -> None:
    from onp.bench.grid import expand

    cfg = load_bench(path)
    models, cells = expand(cfg)
    assert len(cells) == len(models) * len(cfg.defenses) * len(cfg.seeds)
    assert len({c.id for c in cells}) == len(cells)


def test_metric_table_marks_partial_means_and_lone_values() -> None:
    from onp.bench.report import aggregate, metric_table

    def row(attack: str, defense: str, asr: float) -> dict:
        return {"attack": {"name": attack}, "defense": defense, "asr": asr, "clean_acc": 0.9, "ra": 0.5,
                "der": 0.9, "wall_time": 1.0, "before": {"clean_acc": 0.9, "asr": 1.0, "ra": 0.0}}

    rows = [row("a", "x", 0.1), row("b", "x", 0.4), row("a", "y", 0.0), row("a", "z", 0.2), row("b", "z", 0.2)]
    table = metric_table(aggregate(rows), "asr", "ASR", min)
    header, ra, rb, mean = table
    assert header == ["attack", "no defense", "x", "y", "z"]
    assert ra[2:] == ["10.00", "**0.00**", "20.00"]
    assert rb[2:] == ["40.00", "-", "**20.00**"]
    # y covers one attack of two: its mean is marked and may not win; x and z compete
    assert mean[2:] == ["25.00", "0.00 (1 of 2)", "**20.00**"]
    lone = metric_table(aggregate([row("a", "x", 0.1)]), "asr", "ASR", min)
    assert "**" not in "".join(lone[1] + lone[2])


def _sleeper(pid_file: str) -> None:
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(120)


def test_a_cell_process_ends_when_its_bench_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "cell.pid"
    script = ("import multiprocessing as mp, os, sys\n"
              "from concurrent.futures import ProcessPoolExecutor\n"
              f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              "from onp.bench.runner import exit_with_parent\n"
              "import test_bench\n"
              "if __name__ == '__main__':\n"
              "    with ProcessPoolExecutor(1, mp_context=mp.get_context('spawn'), initializer=exit_with_parent,\n"
              "                             initargs=(os.getpid(), 0.2)) as pool:\n"
              f"        pool.submit(test_bench._sleeper, {str(pid_file)!r}).result()\n")
    (tmp_path / "bench.py").write_text(script)
    parent = subprocess.Popen([sys.executable, str(tmp_path / "bench.py")])
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and parent.poll() is None, "the cell never started"
            time.sleep(0.2)
        cell = int(pid_file.read_text())
        parent.send_signal(signal.SIGKILL)  # no clean-up at all, as a crash or `kill -9`
        parent.wait()
        deadline = time.monotonic() + 20
        while _alive(cell):
            assert time.monotonic() < deadline, "the cell process outlived its bench"
            time.sleep(0.2)
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")  # a zombie is gone for our purpose
    return not (stat.exists() and stat.read_text().split(") ")[1].startswith("Z"))


def _cell(defense: str, attack: str, asr: float, acc: float = 0.88, model: str = "resnet18", seed: int = 0,
          bench: str = "eval") -> dict:
    before = {"clean_acc": 0.9, "asr": 1.0, "ra": 0.0}
    return {"bench": bench, "attack": {"name": attack}, "defense": defense, "model": {"name": model, "width": 16},
            "model_id": f"{model}-{attack}", "seed": seed, "asr": asr, "clean_acc": acc, "ra": 0.5,
            "der": der(before, {"asr": asr, "clean_acc": acc}), "wall_time": 1.0, "before": before}


def test_an_attack_on_a_second_architecture_is_its_own_line() -> None:
    from onp.bench.report import aggregate, with_cases

    rows = with_cases([_cell("x", "badnets", 0.1), _cell("x", "blended", 0.2), _cell("x", "badnets", 0.6, model="vgg")])
    agg = aggregate(rows)
    assert agg["attacks"] == ["badnets", "blended", "badnets (vgg w16)"]
    assert agg["table"]["badnets"]["x"]["asr"][0] == 0.1 and agg["table"]["badnets (vgg w16)"]["x"]["asr"][0] == 0.6
    assert [r["case"] for r in with_cases([_cell("x", "sig", 0.1, model="vgg")])] == ["sig"], "one architecture"


def test_comparison_names_where_two_sets_disagree(tmp_path: Path) -> None:
    from onp.bench.report import comparison_table, compared_means

    dev = [_cell("a", "badnets", 0.02, bench="dev"), _cell("a", "sig", 0.04, bench="dev"),
           _cell("b", "badnets", 0.10, bench="dev"), _cell("c", "badnets", 0.1, bench="dev")]
    ev = [_cell("a", "badnets", 0.03), _cell("a", "sig", 0.05, seed=0), _cell("a", "sig", 0.07, seed=1),
          _cell("b", "badnets", 0.30, acc=0.85), _cell("d", "badnets", 0.1)]
    table = comparison_table(*compared_means(ev, dev), "eval", "dev")
    assert table[0][:4] == ["defense", "mean ASR eval", "mean ASR dev", "mean ASR difference"]
    a, b = table[1:]  # c and d are in one set only
    # a: sig's seeds averaged first, then the cases: (3 + 6) / 2 against (2 + 4) / 2
    assert a[0] == "a" and a[1:4] == ["4.50", "3.00", "+1.50"] and a[-1] == "-"
    assert b[0] == "b" and b[-1] == "ASR +20.00; ACC drop +3.00; DER -11.50"
    dev.append(_cell("e", "wanet", 0.1, bench="dev"))  # e is in both sets, but on no case both hold
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dev))
    # a second architecture only the eval set holds is its own case in eval's tables, and out of the comparison
    ev += [_cell("b", "badnets", 0.90, model="vgg"), _cell("e", "badnets", 0.2, model="vgg")]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ev))
    out = write_report(tmp_path / "eval.jsonl", tmp_path / "out", compare=tmp_path / "dev.jsonl")
    md = (out / "eval.md").read_text()
    assert "## eval against dev, per defense (%, means over the 2 cases both hold, 2 left out;" in md
    assert "| b | 30.00 | 10.00 | +20.00 |" in md and "badnets (vgg w16)" in md
    from onp.bench.report import common_cases

    assert common_cases(ev, [_cell("b", "wanet", 0.1)]) == (ev, [_cell("b", "wanet", 0.1)],
                                                          "means over all cases, none being in both")
    assert (out / "eval_comparison.png").stat().st_size > 1000
    # a second report into the same folder keeps the first one's plots: each plot carries its report's name
    write_report(tmp_path / "dev.jsonl", out, title="dev set")
    assert (out / "eval_asr_bars.png").exists() and (out / "dev set_asr_bars.png").exists()
    assert "(dev%20set_asr_bars.png)" in (out / "dev set.md").read_text()
    assert "eval_" not in (out / "dev set.md").read_text() and "dev%20set" not in md
    (tmp_path / "none.jsonl").write_text("")
    with pytest.raises(OnpError, match="no finished benchmark rows to compare"):
        write_report(tmp_path / "eval.jsonl", tmp_path / "out2", compare=tmp_path / "none.jsonl")
    assert not (tmp_path / "out2").exists(), "nothing half-written"


def test_runtime_table_gives_onp_against_anp_per_attack_and_over_attacks() -> None:
    from onp.bench.report import aggregate, runtime_table, with_cases

    rows = [_cell(d, a, 0.1) | {"wall_time": t, "seed": s} for d, a, t, s in (
        ("onp", "badnets", 300.0, 0), ("onp", "badnets", 500.0, 1), ("anp", "badnets", 400.0, 0),
        ("onp", "sig", 600.0, 0), ("anp", "sig", 200.0, 0), ("anp", "lc", 100.0, 0))]
    table = runtime_table(aggregate(with_cases(rows)))
    assert table[0] == ["attack", "onp", "anp", "onp/anp"]
    assert table[1:] == [["badnets", "400", "400", "1.00"], ["sig", "600", "200", "3.00"], ["lc", "-", "100", "-"],
                         ["mean over attacks", "500", "233", "1.67"]]  # the ratio: (400 + 600) / (400 + 200)
