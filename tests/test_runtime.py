import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from onp.errors import OnpError
from onp.utils.runtime import batch_statistics, code_changes, frozen, git_revision, trainable


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5),
                        nn.LazyLinear(2))
    net(torch.rand(2, 3, 6, 6))
    with torch.no_grad():
        net[1].running_mean.fill_(5.0)  # far from any batch's mean, so the two modes differ
    return net.eval()


def test_batch_statistics_normalizes_by_batch_and_restores_everything() -> None:
    net = _net()
    x = torch.rand(8, 3, 6, 6)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    eval_out = net(x)
    with batch_statistics(net):
        assert net[1].training and not net[4].training  # BatchNorm in train mode, dropout not
        feats = net[:2](x)
        assert torch.allclose(feats.mean((0, 2, 3)), net[1].bias, atol=1e-5)  # normalized by this batch
        a, b = net(x), net(x)
        assert torch.equal(a, b)  # no dropout noise
    assert not any(m.training for m in net.modules())
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(net(x), eval_out)


def test_batch_statistics_restores_train_mode_flags() -> None:
    net = _net().train()
    with batch_statistics(net):
        pass
    assert all(m.training for m in net.modules())


def test_frozen_restores_each_flag() -> None:
    net = _net()
    net[0].weight.requires_grad_(False)
    with frozen(net):
        assert not any(p.requires_grad for p in net.parameters())
    assert not net[0].weight.requires_grad and net[0].bias.requires_grad and net[1].weight.requires_grad


def test_trainable_records_gradients_and_restores_each_flag() -> None:
    net = _net()
    net.requires_grad_(False)
    net[1].weight.requires_grad_(True)
    with torch.no_grad(), trainable(net):
        assert all(p.requires_grad for p in net.parameters())
        assert net(torch.rand(2, 3, 6, 6)).grad_fn is not None, "autograd records even under no_grad"
    assert [p.requires_grad for p in net.parameters()] == [False, False, True, False, False, False]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def _commit_all(repo: Path) -> str:
    """Commit every file under ``repo`` (a new repository the first time) and return the new revision."""
    if not (repo / ".git").exists():
        _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    return _git(repo, "rev-parse", "HEAD").strip()


def test_git_revision_is_dirty_only_when_the_package_changed(tmp_path: Path) -> None:
    pkg = tmp_path / "src" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "code.py").write_text("x = 1\n")
    (tmp_path / "results.jsonl").write_text("")
    head = _commit_all(tmp_path)
    (tmp_path / "results.jsonl").write_text("{}\n")  # a bench writing its rows
    assert git_revision(pkg) == head
    (pkg / "code.py").write_text("x = 2\n")
    assert git_revision(pkg) == head + "-dirty"
    assert git_revision(Path("/")) is None


def test_code_changes_name_the_package_files_that_differ_from_a_revision(tmp_path: Path) -> None:
    pkg = tmp_path / "src" / "pkg"
    (pkg / "defenses").mkdir(parents=True)
    for name in ("defenses/clp.py", "cli.py", "core.py"):
        (pkg / name).write_text("x = 1\n")
    first = _commit_all(tmp_path)
    assert code_changes(first, package=pkg) == []
    (pkg / "cli.py").write_text("x = 2\n")  # presentation only
    (tmp_path / "README.md").write_text("outside the package\n")
    assert code_changes(first, package=pkg) == []
    (pkg / "defenses" / "clp.py").write_text("x = 2\n")
    assert code_changes(first, package=pkg) == ["defenses/clp.py"], "an uncommitted edit counts"
    second = _commit_all(tmp_path)
    assert code_changes(first, second, package=pkg) == ["defenses/clp.py"]
    assert code_changes(second, package=pkg) == []
    with pytest.raises(OnpError, match="cannot compare onp's source with revision 'nosuch'"):
        code_changes("nosuch", package=pkg)
    with pytest.raises(OnpError, match="not a git revision: '--output=x'"):
        code_changes("--output=x", package=pkg)
    with pytest.raises(OnpError, match="cannot compare"):
        code_changes(first, package=Path("/"))


def test_provenance_names_the_revision_read_first(monkeypatch: pytest.MonkeyPatch) -> None:
    from onp.utils import runtime

    monkeypatch.setattr(runtime, "_PROVENANCE", {})
    monkeypatch.setattr(runtime, "git_revision", lambda: "first")
    assert runtime.provenance()["git"] == "first"
    monkeypatch.setattr(runtime, "git_revision", lambda: "checkout changed during the run")
    assert runtime.provenance()["git"] == "first"
