"""TrojanNN (Liu et al. 2018, "Trojaning Attack on Neural Networks")."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from onp.attacks.base import Attack
from onp.attacks.registry import register_attack
from onp.data.base import ImageDataset
from onp.errors import OnpError
from onp.utils.progress import ProgressFactory, null_progress
from onp.utils.runtime import frozen

log = logging.getLogger(__name__)


def last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise OnpError("trojannn needs a model whose last layer is nn.Linear")
    return linears[-1]


@register_attack
class TrojanNN(Attack):
    """A trigger patch optimized to drive chosen internal neurons of the model to high activation.

    As in the paper: pick the neurons of an internal layer with the strongest connections, then optimize the
    pixels inside a fixed trigger mask by gradient descent so those neurons fire at a high target value, then
    train on data stamped with that trigger. Here the layer is the penultimate feature layer (the input of the
    last linear layer), the neurons are the ``num_neurons`` with the largest L1 norm of outgoing weights, the
    model is a clean reference of the victim's architecture, and the poisoned model is trained from scratch
    on the poisoned set (the paper retrains the already-trained model; both leave the trigger tied to the
    selected neurons' features).

    Args:
        patch_size: side of the square mask at the bottom-right (default ``round(7 * H / 32)``, ~5% of the
            image; the paper's square masks cover 4-7%).
        num_neurons: neurons to excite (default 1, as the paper).
        target_value: the activation the neurons are pushed to (default 10 times their largest clean value).
        steps: optimization steps (default 300), learning rate ``lr`` (default 0.1, Adam).
    """

    name = "trojannn"
    needs_reference = True

    def __init__(self, *args: Any, patch_size: int | None = None, num_neurons: int = 1,
                 target_value: float | None = None, steps: int = 300, lr: float = 0.1, **kw: Any) -> None:
        super().__init__(*args, **kw)
        c, h, w = self.image_shape
        self.check_patch(patch_size)
        self.patch_size = patch_size or max(1, round(7 * h / 32))
        self.num_neurons, self.target_value, self.steps, self.lr = num_neurons, target_value, steps, lr
        self.pattern: Tensor | None = None
        self.neurons: Tensor | None = None

    def apply(self, x: Tensor) -> Tensor:
        if self.pattern is None:
            raise OnpError("trojannn: the trigger is not made yet; call prepare() with a reference model")
        x = x.clone()
        s = self.patch_size
        x[..., -s:, -s:] = self.pattern.to(x.device)
        return x

    def prepare(self, train: ImageDataset, reference: nn.Module | None, device: torch.device,
                progress: ProgressFactory = null_progress) -> None:
        if reference is None:
            raise OnpError("trojannn needs a clean reference model to optimize its trigger")
        model = reference.to(device).eval()
        fc = last_linear(model)
        self.neurons = fc.weight.abs().sum(0).topk(self.num_neurons).indices.cpu()
        feats: list[Tensor] = []
        handle = fc.register_forward_pre_hook(lambda m, inp: feats.append(inp[0]))
        g = torch.Generator().manual_seed(self.seed)
        with frozen(model):  # only the trigger is optimized
            try:
                x0 = train.float_images(torch.randperm(len(train), generator=g)[:512]).to(device)
                with torch.no_grad():
                    model(x0)
                clean_max = feats.pop()[:, self.neurons.to(device)].max().item()
                target = self.target_value if self.target_value is not None else 10 * max(clean_max, 1.0)
                c, s = self.image_shape[0], self.patch_size
                logit = torch.randn((c, s, s), generator=g).to(device).requires_grad_(True)
                opt = torch.optim.Adam([logit], lr=self.lr)
                with progress(total=self.steps, desc="trojannn: trigger") as bar:
                    for step in range(self.steps):
                        idx = torch.randint(0, len(x0), (64,), generator=g)
                        xb = x0[idx].clone()
                        xb[..., -s:, -s:] = torch.sigmoid(logit)
                        model(xb)
                        act = feats.pop()[:, self.neurons.to(device)]
                        loss = ((act - target) ** 2).mean()
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                        bar.update(1, act=act.mean().item())
                self.pattern = torch.sigmoid(logit).detach().cpu()
                log.info("trojannn: neurons %s driven from %.3g to %.3g (target %.3g)", self.neurons.tolist(),
                         clean_max, act.mean().item(), target)
            finally:
                handle.remove()

    def trigger_state(self) -> dict[str, Tensor]:
        if self.pattern is None:
            return {}
        return {"pattern": self.pattern, "neurons": self.neurons}

    def load_trigger_state(self, state: dict[str, Tensor]) -> None:
        self.pattern, self.neurons = state["pattern"], state.get("neurons")

    def params(self) -> dict[str, Any]:
        return {"patch_size": self.patch_size, "num_neurons": self.num_neurons, "target_value": self.target_value,
                "steps": self.steps, "lr": self.lr}
