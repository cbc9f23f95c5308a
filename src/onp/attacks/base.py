"""The one ``Attack`` interface: put a trigger on a batch, and poison a training set.

Poisoning is static: the chosen training images are replaced by triggered copies once, before training, as a
data-poisoning attacker would ship them; augmentation then applies to clean and poisoned images alike.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from onp.data.base import ImageDataset
from onp.errors import OnpError
from onp.utils.progress import ProgressFactory, null_progress

log = logging.getLogger(__name__)

_CHUNK = 1000  # images triggered at once while poisoning


@dataclass
class PoisonedDataset:
    """A training set after poisoning.

    Args:
        base: the clean training set.
        labels: (N,) labels to train on: the target label at ``poison_idx`` for dirty-label attacks.
        poison_idx: sorted indices of the poisoned samples (exactly ``round(poison_rate * N)``).
        cross_idx: sorted indices of "noise"/"cross" samples (WaNet, Input-aware): modified images that keep
            their true label, so the model learns the trigger and not any modification.
        mod_idx: sorted union of ``poison_idx`` and ``cross_idx``.
        mod_images: float32 (len(mod_idx), C, H, W) in [0,1], the images stored at ``mod_idx``.
    """

    base: ImageDataset
    labels: Tensor
    poison_idx: Tensor
    cross_idx: Tensor
    mod_idx: Tensor
    mod_images: Tensor

    def __len__(self) -> int:
        return len(self.base)

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Images in [0,1] and training labels for the indices ``idx``."""
        x = self.base.float_images(idx)
        pos = torch.searchsorted(self.mod_idx, idx)
        pos_c = pos.clamp(max=max(len(self.mod_idx) - 1, 0))
        hit = (pos < len(self.mod_idx)) & (self.mod_idx[pos_c] == idx) if len(self.mod_idx) else \
            torch.zeros_like(idx, dtype=torch.bool)
        if hit.any():
            x[hit] = self.mod_images[pos_c[hit]]
        return x, self.labels[idx]


class Attack(ABC):
    """A backdoor attack.

    Subclasses implement :meth:`apply` (the test-time trigger); attacks that need preparation (a learned
    trigger, adversarial perturbations) override :meth:`prepare`, and those with extra training-time samples set
    ``cross_ratio`` and override :meth:`cross_images`.

    Args:
        num_classes: classes of the dataset.
        image_shape: (C, H, W).
        target_label: the label poisoned samples are given (all-to-one), in ``[0, num_classes)``.
        poison_rate: fraction poisoned, in (0, 1]: of the training set for dirty-label attacks, of the target
            class for clean-label ones (as the SIG and LC papers count it; docs/design.md says why).
        all_to_all: label ``y`` becomes ``(y + 1) % num_classes`` instead of ``target_label``.
        seed: seeds the choice of samples and any random trigger.
    """

    name: ClassVar[str] = ""
    clean_label: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False
    supports_all_to_all: ClassVar[bool] = True

    def __init__(self, num_classes: int, image_shape: tuple[int, int, int], target_label: int = 0,
                 poison_rate: float = 0.1, all_to_all: bool = False, seed: int = 0) -> None:
        if not 0 < poison_rate <= 1:
            raise OnpError(f"poison rate must be in (0, 1], got {poison_rate}")
        if not 0 <= target_label < num_classes:
            raise OnpError(f"target label {target_label} is out of range [0, {num_classes})")
        if all_to_all and not self.supports_all_to_all:
            raise OnpError(f"attack {self.name!r} is clean-label and has no all-to-all mode")
        self.num_classes = num_classes
        self.image_shape = tuple(image_shape)
        self.target_label = target_label
        self.poison_rate = poison_rate
        self.all_to_all = all_to_all
        self.seed = seed
        self.cross_ratio = 0.0

    def check_patch(self, size: int | None, margin: int = 0, corners: int = 1) -> None:
        """Refuse a patch side that is not at least 1 or does not fit the image (``corners`` patches side by side
        across it, ``margin`` pixels from the edge)."""
        h = min(self.image_shape[1:])
        if size is not None and not 1 <= size * corners + margin <= h:
            raise OnpError(f"attack {self.name!r}: patch_size {size} does not fit {h}x{h} images "
                           f"(at least 1, at most {max(1, (h - margin) // corners)})")

    # --- the trigger -------------------------------------------------------------------------------------
    @abstractmethod
    def apply(self, x: Tensor) -> Tensor:
        """Return ``x`` (B, C, H, W) in [0,1] with the test-time trigger, in [0,1]."""

    def poison_images(self, x: Tensor, idx: Tensor) -> Tensor:
        """The training-time poisoned version of images ``x`` at training indices ``idx`` (default: apply)."""
        return self.apply(x)

    def cross_images(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Noise/cross versions of ``x`` that keep their labels (only when ``cross_ratio > 0``)."""
        raise NotImplementedError(f"{self.name} has no cross samples")

    def target_of(self, y: Tensor) -> Tensor:
        """The label a triggered image of true label ``y`` should be classified as."""
        if self.all_to_all:
            return (y + 1) % self.num_classes
        return torch.full_like(y, self.target_label)

    def asr_mask(self, y: Tensor) -> Tensor:
        """Which test images count for ASR and RA: all-to-one skips those already of the target class."""
        return torch.ones_like(y, dtype=torch.bool) if self.all_to_all else y != self.target_label

    # --- preparation and state -----------------------------------------------------------------------------
    def prepare(self, train: ImageDataset, reference: nn.Module | None, device: torch.device,
                progress: ProgressFactory = null_progress) -> None:
        """Learn what the trigger needs before poisoning (default: nothing). ``reference`` is a clean model of
        the victim's architecture, given when ``needs_reference`` is set."""

    def trigger_state(self) -> dict[str, Tensor]:
        """Tensors that define the trigger (saved beside the model so ``onp eval`` rebuilds it)."""
        return {}

    def load_trigger_state(self, state: dict[str, Tensor]) -> None:
        if state:
            raise OnpError(f"attack {self.name!r} has no trigger state, got {sorted(state)}")

    def params(self) -> dict[str, Any]:
        """The trigger parameters, for the run's metadata."""
        return {}

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "target_label": self.target_label, "poison_rate": self.poison_rate,
                "all_to_all": self.all_to_all, "seed": self.seed, "params": self.params()}

    # --- poisoning -------------------------------------------------------------------------------------------
    def candidates(self, labels: Tensor) -> Tensor:
        """Indices that may be poisoned: the target class for clean-label attacks, else the other classes
        (all-to-one) or every sample (all-to-all)."""
        if self.clean_label:
            return torch.nonzero(labels == self.target_label).flatten()
        if self.all_to_all:
            return torch.arange(len(labels))
        return torch.nonzero(labels != self.target_label).flatten()

    def select(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Choose the poisoned and the cross indices, reproducibly for ``seed``."""
        n = len(labels)
        cand = self.candidates(labels)
        pool, what = (len(cand), "target class") if self.clean_label else (n, "training set")
        n_poison = int(round(self.poison_rate * pool))
        if n_poison < 1:
            raise OnpError(f"poison rate {self.poison_rate} poisons no sample of a {pool}-image {what}")
        if len(cand) < n_poison:
            kind = "target-class" if self.clean_label else "eligible"
            raise OnpError(f"{self.name}: poison rate {self.poison_rate} needs {n_poison} samples but only "
                           f"{len(cand)} {kind} samples exist (at most {len(cand) / n:.4g})")
        g = torch.Generator().manual_seed(self.seed)
        poison = cand[torch.randperm(len(cand), generator=g)[:n_poison]].sort().values
        n_cross = int(round(self.cross_ratio * n_poison))
        if n_cross:
            rest = torch.ones(n, dtype=torch.bool)
            rest[poison] = False
            pool = torch.nonzero(rest).flatten()
            n_cross = min(n_cross, len(pool))
            cross = pool[torch.randperm(len(pool), generator=g)[:n_cross]].sort().values
        else:
            cross = torch.empty(0, dtype=torch.long)
        return poison, cross

    @torch.no_grad()
    def poison(self, train: ImageDataset, progress: ProgressFactory = null_progress) -> PoisonedDataset:
        """Poison ``train``: exactly ``round(poison_rate * N)`` samples (``N``: the training set, or the target
        class for clean-label attacks) get the trigger (and, for dirty-label attacks, the target label); cross
        samples get a label-keeping modification; nothing else changes."""
        poison_idx, cross_idx = self.select(train.labels)
        labels = train.labels.clone()
        if not self.clean_label:
            labels[poison_idx] = self.target_of(train.labels[poison_idx])
        mod_idx, order = torch.cat([poison_idx, cross_idx]).sort()
        out = torch.empty((len(mod_idx), *train.image_shape), dtype=torch.float32)
        g = torch.Generator().manual_seed(self.seed + 1)
        parts = [(poison_idx, lambda x, i: self.poison_images(x, i))]
        if len(cross_idx):
            parts.append((cross_idx, lambda x, i: self.cross_images(x, g)))
        offset = 0
        with progress(total=len(mod_idx), desc=f"poison ({self.name})") as bar:
            for idx, fn in parts:
                for s in range(0, len(idx), _CHUNK):
                    chunk = idx[s:s + _CHUNK]
                    out[offset:offset + len(chunk)] = fn(train.float_images(chunk), chunk).clamp(0, 1)
                    offset += len(chunk)
                    bar.update(len(chunk))
        if not torch.isfinite(out).all():
            raise OnpError(f"{self.name}: the poisoned images hold non-finite values; the trigger is broken")
        log.info("%s: poisoned %d of %d samples, %d cross samples", self.name, len(poison_idx), len(train),
                 len(cross_idx))
        return PoisonedDataset(train, labels, poison_idx, cross_idx, mod_idx, out[order])
