"""NAD: Neural Attention Distillation (Li et al. 2021, "Neural Attention Distillation: Erasing Backdoor Triggers
from Deep Neural Networks", ICLR)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onp.defenses.base import Defense, DefenseContext, DefenseData, DefenseResult
from onp.defenses.finetune import finetune
from onp.defenses.registry import register_defense
from onp.errors import OnpError
from onp.evaluate import accuracy

Point = tuple[str, int]  # (leaf module name, which call of it in one forward pass)


def attention_map(a: Tensor, p: float = 2.0) -> Tensor:
    """Attention of a feature map (Zagoruyko and Komodakis 2017): ``sum_c |a_c|^p`` over channels, flattened
    over space and L2-normalized per image.

    Shapes:
        a (B, C, H, W) -> (B, H * W).
    """
    return F.normalize(a.abs().pow(p).mean(1).flatten(1), dim=1)


def attention_loss(student: Tensor, teacher: Tensor, p: float = 2.0) -> Tensor:
    """NAD's distillation loss for one layer: mean squared difference of the two attention maps."""
    return F.mse_loss(attention_map(student, p), attention_map(teacher, p))


def stage_points(model: nn.Module, example: Tensor, n: int = 3) -> list[Point]:
    """Where the model's last ``n`` stages end, found by tracing one forward pass on ``example``.

    A stage ends where the spatial resolution changes: the feature map *entering* a leaf module that changes
    the height or width (a strided conv, a pooling layer, a flatten) is the output of the stage before it. In a
    ResNet these are exactly the outputs of ``layer2``, ``layer3`` and ``layer4`` (the inputs of the next
    stage's strided convs and of the global pooling); in a pre-activation ResNet the pre-activated stage
    outputs; in a VGG the inputs of its max-pools. Only maps after the first convolution count (the image is not
    a stage); maps of a single pixel carry no spatial attention and are skipped; a map read by several layers
    (a block's conv and its shortcut) counts once.

    Raises:
        OnpError: the model has no spatial feature maps (for example, a multi-layer perceptron).
    """
    names = {m: name for name, m in model.named_modules()}
    calls: dict[nn.Module, int] = {}
    found: list[tuple[Point, Tensor]] = []
    convolved = [False]  # feature maps only: the image (before any conv has run) is not a stage

    def hook(mod: nn.Module, inp: tuple[object, ...], out: object) -> None:
        k = calls.get(mod, 0)
        calls[mod] = k + 1
        a = inp[0] if inp else None
        seen, convolved[0] = convolved[0], convolved[0] or isinstance(mod, nn.Conv2d)
        if not seen or not isinstance(a, Tensor) or a.dim() != 4 or a.shape[-2] * a.shape[-1] <= 1:
            return
        if not isinstance(out, Tensor) or (out.dim() == 4 and out.shape[-2:] == a.shape[-2:]):
            return
        if not any(t is a for _, t in found):  # the tensors stay referenced, so identity is safe here
            found.append(((names[mod], k), a))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if not found:
        raise OnpError("NAD needs a convolutional model: no layer of this model reduces a spatial feature map")
    return [pt for pt, _ in found[-n:]]


class FeatureTaps:
    """Forward pre-hooks that keep, on every forward pass, the inputs of the modules at ``points``."""

    def __init__(self, model: nn.Module, points: Sequence[Point]) -> None:
        self.model, self.points = model, list(points)
        self.features: list[Tensor | None] = [None] * len(self.points)
        self._calls: dict[str, int] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @contextlib.contextmanager
    def attached(self) -> Iterator[FeatureTaps]:
        modules = dict(self.model.named_modules())
        # counters restart at every forward pass of the whole model
        self._handles.append(self.model.register_forward_pre_hook(lambda m, i: self._calls.clear()))
        for name in dict.fromkeys(n for n, _ in self.points):
            self._handles.append(modules[name].register_forward_pre_hook(self._hook(name)))
        try:
            yield self
        finally:
            for h in self._handles:
                h.remove()
            self._handles = []

    def _hook(self, name: str):  # noqa: ANN202
        def hook(mod: nn.Module, inp: tuple[Tensor, ...]) -> None:
            k = self._calls.get(name, 0)
            self._calls[name] = k + 1
            for slot, point in enumerate(self.points):
                if point == (name, k):
                    self.features[slot] = inp[0]

        return hook


@register_defense
class NAD(Defense):
    """Fine-tune a teacher on the clean set, then fine-tune the backdoored model (the student) on the clean set
    while matching the teacher's attention maps:

    ``L = CE(f_s(x), y) + sum_i beta_i * || A(F_s^i(x)) - A(F_t^i(x)) ||^2``, with
    ``A(F) = normalize(sum_c |F_c|^p)`` (:func:`attention_map`) and the squared difference averaged as in the
    authors' code.

    Layers: the paper distills the outputs of a WideResNet's three residual groups. To work on any architecture
    without model-specific code, the layers here are the outputs of the model's last three stages, a stage
    ending where the spatial resolution changes (:func:`stage_points`): ``layer2``-``layer4`` of a ResNet-18,
    the last three max-pool inputs of a VGG. A model with fewer stages (the small CNN has two) uses the last
    ``betas`` for the stages it has.

    Defaults (BackdoorBench's NAD settings): teacher fine-tuned 10 epochs with lr 0.01;
    student trained 20 epochs with lr 0.01 (SGD, momentum 0.9, cosine schedule, the dataset's augmentation);
    ``betas = (500, 1000, 1000)`` from the shallowest to the deepest stage; ``p = 2``. The authors' repository
    (bboylyg/NAD, ``config.py``) has the same betas since its last change of them (earlier ``(0, 0, 5000)``);
    it trains the student at lr 0.1 for 2 epochs, then 0.01, with Nesterov momentum, and ships its teacher
    without the code that fine-tuned it.

    Args:
        teacher_epochs, teacher_lr: fine-tuning of the teacher.
        epochs, lr: attention distillation of the student.
        betas: weights of the three attention losses, shallow to deep.
        p: power of the attention map.
        batch_size: batch of both trainings (64, as in the authors' code).
    """

    name = "nad"

    def __init__(self, teacher_epochs: int = 10, teacher_lr: float = 0.01, epochs: int = 20, lr: float = 0.01,
                 betas: Sequence[float] = (500.0, 1000.0, 1000.0), p: float = 2.0, batch_size: int = 64) -> None:
        if not betas:
            raise OnpError("nad needs at least one attention weight in betas")
        self.teacher_epochs, self.teacher_lr, self.epochs, self.lr = teacher_epochs, teacher_lr, epochs, lr
        self.betas, self.p, self.batch_size = [float(b) for b in betas], p, batch_size

    def repair(self, model: nn.Module, data: DefenseData, ctx: DefenseContext) -> DefenseResult:
        model = model.to(ctx.device)
        teacher = finetune(copy.deepcopy(model), data, ctx, self.teacher_epochs, self.teacher_lr, self.batch_size,
                           desc="nad: teacher")
        teacher.eval().requires_grad_(False)
        student = copy.deepcopy(model)
        points = stage_points(student, data.x_fit[:1].to(ctx.device), len(self.betas))
        betas = self.betas[-len(points):]
        s_taps, t_taps = FeatureTaps(student, points), FeatureTaps(teacher, points)

        def distill(net: nn.Module, x: Tensor, y: Tensor, logits: Tensor) -> Tensor:
            with torch.no_grad():
                teacher(x)  # fills t_taps with the teacher's maps of the same augmented batch
            return sum(b * attention_loss(s, t, self.p)  # type: ignore[return-value]
                       for b, s, t in zip(betas, s_taps.features, t_taps.features))

        with s_taps.attached(), t_taps.attached():
            student = finetune(student, data, ctx, self.epochs, self.lr, self.batch_size, extra_loss=distill,
                               desc="nad: distill")
        return DefenseResult(student, {
            "layers": [{"layer": name, "call": k} for name, k in points],
            "clean_acc_teacher_val": accuracy(teacher, data.x_val, data.y_val, ctx.device),
        })
