"""The GAN variant registry. A variant names its parts and its published defaults; it never owns a loop.

Adding a variant is one `register(Variant(...))` call below. `register` validates every name at import time,
so a typo fails when gansweep loads, not in trial 40 of a study.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import nn

from gansweep.config import TrainConfig, field_names
from gansweep.errors import ConfigError, UnknownNameError
from gansweep.losses import LOSSES, Loss
from gansweep.nets import ARCHITECTURES, CONDITIONINGS, Architecture, Conditioning
from gansweep.regularizers import REGULARIZERS, Regularizer

__all__ = ["Variant", "VARIANTS", "register", "get_variant"]

_KEBAB = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


@dataclass(frozen=True)
class Variant:
    name: str
    summary: str
    arch: str
    loss: str
    regularizer: str = "none"
    conditioning: str = "none"
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def architecture(self) -> Architecture:
        return ARCHITECTURES[self.arch]

    @property
    def loss_part(self) -> Loss:
        return LOSSES[self.loss]

    @property
    def regularizer_part(self) -> Regularizer:
        return REGULARIZERS[self.regularizer]

    @property
    def conditioning_part(self) -> Conditioning:
        return CONDITIONINGS[self.conditioning]

    def build(self, config: TrainConfig, image_shape: tuple[int, int, int], dataset_classes: int
              ) -> tuple[nn.Module, nn.Module]:
        """A fresh (G, D) pair made of this variant's parts; D already carries its regularizer's constraint."""
        n_classes = self.conditioning_part.n_classes(dataset_classes)
        g = self.architecture.build_g(config, image_shape, n_classes)
        d = self.architecture.build_d(config, image_shape, n_classes)
        self.regularizer_part.prepare(d)
        return g, d

    def config(self, **changes: Any) -> TrainConfig:
        """The variant's training config: generic defaults, then its overrides, then `changes` (None = not given)."""
        given = {k: v for k, v in changes.items() if v is not None}
        config = TrainConfig().replace(**self.overrides).replace(**given)
        if config.label_smoothing and not self.loss_part.has_real_target:
            raise ConfigError(f"label_smoothing has no meaning for the {self.loss} loss of {self.name!r} "
                              f"(no real-label target), got {config.label_smoothing}; leave it at 0")
        return config

    def unused_fields(self, config: TrainConfig) -> set[str]:
        """The fields of `config` that no part of this variant reads (a DCGAN's MLP widths, a clip value
        without clipping, maxout's pieces without maxout), so a run's params show only what it used."""
        parts = {name for arch in ARCHITECTURES.values() for name in arch.reads} | \
            {name for reg in REGULARIZERS.values() for name in reg.reads} | {"label_smoothing", "maxout_pieces"}
        used = set(self.architecture.reads) | set(self.regularizer_part.reads)
        if self.loss_part.has_real_target:
            used.add("label_smoothing")
        if not (config.maxout and "maxout" in used):
            used.discard("maxout_pieces")
        return parts - used


VARIANTS: dict[str, Variant] = {}


def register(variant: Variant) -> Variant:
    """Add `variant` to the registry after checking its name, its parts and its override keys."""
    if not _KEBAB.match(variant.name):
        raise ValueError(f"variant name must be kebab-case, got {variant.name!r}")
    if variant.name in VARIANTS:
        raise ValueError(f"variant {variant.name!r} is already registered")
    for kind, name, table in (("architecture", variant.arch, ARCHITECTURES), ("loss", variant.loss, LOSSES),
                              ("regularizer", variant.regularizer, REGULARIZERS),
                              ("conditioning", variant.conditioning, CONDITIONINGS)):
        if name not in table:
            raise UnknownNameError(kind, name, table)
    unknown = set(variant.overrides) - field_names(TrainConfig)
    if unknown:
        raise ValueError(f"variant {variant.name!r} overrides unknown config fields: {', '.join(sorted(unknown))}")
    frozen = dataclasses.replace(variant, overrides=MappingProxyType(dict(variant.overrides)))
    frozen.config()  # the overrides themselves must pass TrainConfig's range checks
    VARIANTS[variant.name] = frozen
    return frozen


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise UnknownNameError("variant", name, VARIANTS, "gansweep list variants") from None


# Dropout in D as in the original GAN's D; lr 4e-4 over DCGAN's 2e-4 because on mnist-5k it gives clearly
# recognisable digits within the default 50 epochs on a CPU, where 2e-4 still shows many smudges.
_MLP = {"lr": 4e-4, "betas": (0.5, 0.999), "dropout": 0.3}
_DCGAN = {"lr": 2e-4, "betas": (0.5, 0.999)}  # Radford et al. 2016
_WGAN_GP = {"lr": 1e-4, "betas": (0.0, 0.9), "n_critic": 5}  # Gulrajani et al. 2017, Algorithm 1

register(Variant("gan", "MLP G and D, non-saturating loss (Goodfellow et al. 2014)",
                 arch="mlp", loss="non-saturating", overrides=_MLP))
register(Variant("cgan", "conditional MLP GAN, labels embedded in G and D (Mirza & Osindero 2014)",
                 arch="mlp", loss="non-saturating", conditioning="class", overrides=_MLP))
register(Variant("dcgan", "conv G and D, non-saturating loss (Radford et al. 2016)",
                 arch="dcgan", loss="non-saturating", overrides=_DCGAN))
register(Variant("cdcgan", "conditional DCGAN, label as an extra D channel",
                 arch="dcgan", loss="non-saturating", conditioning="class", overrides=_DCGAN))
register(Variant("wgan", "Wasserstein critic with weight clipping, RMSprop (Arjovsky et al. 2017)",
                 arch="dcgan", loss="wasserstein", regularizer="weight-clipping",
                 overrides={"optimizer": "rmsprop", "lr": 5e-5, "n_critic": 5, "clip_value": 0.01}))
register(Variant("wgan-gp", "Wasserstein critic with gradient penalty (Gulrajani et al. 2017)",
                 arch="dcgan", loss="wasserstein", regularizer="gradient-penalty", overrides=_WGAN_GP))
register(Variant("cwgan-gp", "conditional WGAN-GP",
                 arch="dcgan", loss="wasserstein", regularizer="gradient-penalty", conditioning="class",
                 overrides=_WGAN_GP))
register(Variant("lsgan", "least-squares loss (Mao et al. 2017)",
                 arch="dcgan", loss="least-squares", overrides=_DCGAN))
register(Variant("sngan", "hinge loss with spectral normalisation in D (Miyato et al. 2018)",
                 arch="dcgan", loss="hinge", regularizer="spectral-norm",
                 overrides={"lr": 2e-4, "betas": (0.5, 0.999)}))
