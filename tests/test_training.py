from pathlib import Path

import pytest
import torch

import onp.training as training
from onp.data import create_dataset
from onp.errors import OnpError
from onp.models import create_model
from onp.training import TrainConfig, train_model

CFG = TrainConfig(epochs=3, batch_size=128, lr=0.05)


def _setup() -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    data = create_dataset("digits", None, "train")
    model = create_model("small_cnn", num_classes=10, in_channels=1, width=4)
    return model, data


def test_killed_training_resumes_to_the_uninterrupted_result(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    model, data = _setup()
    ref_history = train_model(model, data, CFG, torch.device("cpu"), seed=3)
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    ckpt = tmp_path / ".m.ckpt"
    steps = (len(data) + CFG.batch_size - 1) // CFG.batch_size
    calls = {"n": 0}
    real_batch = training._batch

    def dies_in_epoch_3(d, idx):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] > 2 * steps + 2:
            raise KeyboardInterrupt
        return real_batch(d, idx)

    monkeypatch.setattr(training, "_batch", dies_in_epoch_3)
    model, _ = _setup()
    with pytest.raises(KeyboardInterrupt):
        train_model(model, data, CFG, torch.device("cpu"), seed=3, checkpoint=ckpt, checkpoint_key="k")
    assert ckpt.is_file()
    monkeypatch.setattr(training, "_batch", real_batch)

    model, _ = _setup()  # a fresh process would start from new weights
    history = train_model(model, data, CFG, torch.device("cpu"), seed=3, checkpoint=ckpt, checkpoint_key="k")
    for k, v in model.state_dict().items():
        assert torch.equal(v, reference[k]), k
    assert [h["loss"] for h in history] == [h["loss"] for h in ref_history]


def test_checkpoint_of_another_run_is_ignored(tmp_path: Path) -> None:
    ckpt = tmp_path / ".m.ckpt"
    model, data = _setup()
    train_model(model, data, TrainConfig(epochs=2, batch_size=128, lr=0.05), torch.device("cpu"), seed=3,
                checkpoint=ckpt, checkpoint_key="a")
    assert ckpt.is_file()  # written after epoch 1 (the caller removes it once the model is saved)
    model, _ = _setup()
    history = train_model(model, data, TrainConfig(epochs=2, batch_size=128, lr=0.05), torch.device("cpu"),
                          seed=3, checkpoint=ckpt, checkpoint_key="b")
    assert len(history) == 2  # started over
    ckpt.write_bytes(b"torn")
    model, _ = _setup()
    assert len(train_model(model, data, CFG, torch.device("cpu"), seed=3, checkpoint=ckpt, checkpoint_key="a")) == 3


def test_a_diverging_run_stops_with_an_error_instead_of_training_on() -> None:
    model, data = _setup()
    data.images = data.images.float()
    data.images[5] = float("nan")  # one bad image: the batch that holds it gives a NaN loss
    with pytest.raises(OnpError, match="diverged"):
        train_model(model, data, TrainConfig(epochs=1, batch_size=len(data), lr=0.05), torch.device("cpu"), seed=3)


def test_a_resumed_attack_reports_the_whole_trainings_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """model.json's wall_time counts the epochs trained before a kill, not only the resumed run's."""
    import json
    import time

    from onp.cli import main

    args = ["attack", "--dataset", "digits", "--model", "small_cnn", "--width", "4", "--epochs", "2", "--threads",
            "1", "--device", "cpu", "--out", str(tmp_path / "m")]
    real_batch, real_save = training._batch, training._save_checkpoint

    def slow(d, idx):  # noqa: ANN001, ANN202
        time.sleep(0.2)
        return real_batch(d, idx)

    def killed_after_saving(path, state):  # noqa: ANN001, ANN202  (after epoch 1 of 2)
        real_save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_batch", slow)
    monkeypatch.setattr(training, "_save_checkpoint", killed_after_saving)
    assert main(args) == 130  # interrupted, as by Ctrl-C
    monkeypatch.setattr(training, "_batch", real_batch)
    monkeypatch.setattr(training, "_save_checkpoint", real_save)
    assert main(args) == 0
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    first, second = (e["seconds"] for e in meta["history"])
    assert first >= 1.0 > second  # the killed run's epoch was the slow one
    assert meta["wall_time"] >= first + second
