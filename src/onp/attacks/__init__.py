"""Backdoor attacks (a registry) behind the one :class:`Attack` interface.

``create_attack(name, num_classes, image_shape, target_label=0, poison_rate=0.1, **params)`` builds one;
``list_attacks()`` names them. Every attack's defaults follow its paper, cited in its docstring.
"""

# importing each attack module registers it
from onp.attacks import badnets, blended, bpp, inputaware, lc, sig, trojannn, wanet  # noqa: F401
from onp.attacks.base import Attack, PoisonedDataset
from onp.attacks.registry import ATTACKS, create_attack, list_attacks, register_attack

__all__ = ["ATTACKS", "Attack", "PoisonedDataset", "create_attack", "list_attacks", "register_attack"]
