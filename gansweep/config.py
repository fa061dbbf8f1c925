"""The one home of every training and data parameter, its default and its allowed range.

Variant overrides, study files and CLI flags only change values; they never hold defaults of their own.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gansweep.errors import ConfigError

__all__ = ["TrainConfig", "DataConfig", "default_data_root", "field_names", "OPTIMIZERS", "DEVICES"]

OPTIMIZERS = ("adam", "rmsprop")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    """How one GAN is trained. Values here are the generic defaults; each variant overrides its published ones."""

    # Budget. An epoch is one pass of D over the training split, so a WGAN with n_critic 5 and a GAN with
    # n_critic 1 see the same images per epoch (the WGAN takes a fifth of the G steps).
    epochs: int = 50  # gan on mnist-5k: recognisable digits in under a minute on a 2-core CPU
    batch_size: int = 64

    # Optimisation. lr_g / lr_d, when set, replace lr for that network (TTUR-style separate rates).
    optimizer: str = "adam"
    lr: float = 2e-4
    lr_g: float | None = None
    lr_d: float | None = None
    betas: tuple[float, float] = (0.5, 0.999)  # beta1 = 0.5 per DCGAN (Radford et al. 2016): less oscillation

    # The four swept hyperparameters besides lr.
    dropout: float = 0.0  # in D only; G stays deterministic given z
    label_smoothing: float = 0.0  # one-sided (Salimans et al. 2016): D's real target is 1 - s, fake stays 0
    n_critic: int = 1  # D updates per G update

    # Architecture.
    z_dim: int = 100
    hidden: tuple[int, ...] = (256, 512)  # mlp: G's hidden widths; D uses them reversed
    batchnorm: bool = True  # BatchNorm in G's hidden layers (D never has it: it breaks per-sample penalties)
    maxout: bool = False  # mlp D with maxout units (Goodfellow et al. 2014)
    maxout_pieces: int = 2
    width: int = 64  # dcgan: channels of D's first conv / G's last hidden layer

    # Regularizer strengths; each is read only by its own regularizer.
    clip_value: float = 0.01  # weight clipping (Arjovsky et al. 2017)
    gp_weight: float = 10.0  # gradient penalty lambda (Gulrajani et al. 2017)
    r1_gamma: float = 10.0  # R1 gamma (Mescheder et al. 2018)

    # Run.
    seed: int = 0
    device: str = "auto"
    log_every: int = 20  # G steps between copies of the step metrics to the host: the only sync in the loop
    n_samples: int = 64  # fixed-noise images in each epoch's sample grid

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "epochs", self.epochs, "must be >= 1")
        _check(self.batch_size >= 2, "batch_size", self.batch_size, "must be >= 2")
        _check(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"must be one of {', '.join(OPTIMIZERS)}")
        for name in ("lr", "lr_g", "lr_d"):
            value = getattr(self, name)
            _check(value is None or value > 0, name, value, "must be > 0")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", self.betas,
               "must be two values in [0, 1)")
        _check(0 <= self.dropout < 1, "dropout", self.dropout, "must be in [0, 1)")
        _check(0 <= self.label_smoothing <= 0.5, "label_smoothing", self.label_smoothing, "must be in [0, 0.5]")
        _check(self.n_critic >= 1, "n_critic", self.n_critic, "must be >= 1")
        _check(self.z_dim >= 1, "z_dim", self.z_dim, "must be >= 1")
        _check(1 <= len(self.hidden) <= 2 and all(h >= 1 for h in self.hidden), "hidden", self.hidden,
               "must be one or two positive widths")
        _check(self.maxout_pieces >= 2, "maxout_pieces", self.maxout_pieces, "must be >= 2")
        _check(self.width >= 1, "width", self.width, "must be >= 1")
        _check(self.clip_value > 0, "clip_value", self.clip_value, "must be > 0")
        _check(self.gp_weight >= 0, "gp_weight", self.gp_weight, "must be >= 0")
        _check(self.r1_gamma >= 0, "r1_gamma", self.r1_gamma, "must be >= 0")
        _check(self.device in DEVICES, "device", self.device, f"must be one of {', '.join(DEVICES)}")
        _check(self.log_every >= 1, "log_every", self.log_every, "must be >= 1")
        _check(self.n_samples >= 1, "n_samples", self.n_samples, "must be >= 1")

    @property
    def g_lr(self) -> float:
        return self.lr_g if self.lr_g is not None else self.lr

    @property
    def d_lr(self) -> float:
        return self.lr_d if self.lr_d is not None else self.lr

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with `changes` applied; names that are not fields are rejected, never ignored."""
        unknown = sorted(set(changes) - field_names(TrainConfig))
        if unknown:
            raise ConfigError(f"unknown training parameter(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(field_names(TrainConfig)))}")
        changes = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def default_data_root() -> str:
    """Where torchvision datasets live: $GANSWEEP_DATA, else a per-user cache."""
    return os.environ.get("GANSWEEP_DATA") or str(Path.home() / ".cache" / "gansweep" / "data")


@dataclass(frozen=True)
class DataConfig:
    """Which images a run trains on."""

    dataset: str = "mnist-5k"
    data_root: str = field(default_factory=default_data_root)
    download: bool = True  # fetch a torchvision dataset that is not under data_root yet


def field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _check(ok: bool, name: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{name} {rule}, got {value!r}")
