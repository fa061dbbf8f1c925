"""The one home of every training and data parameter, its default and its allowed range.

Variant overrides, study files and CLI flags only change values; they never hold defaults of their own.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gansweep.errors import ConfigError

__all__ = ["TrainConfig", "DataConfig", "default_data_root", "field_names", "check_types", "OPTIMIZERS", "DEVICES",
           "MAX_SEED"]

OPTIMIZERS = ("adam", "rmsprop")
DEVICES = ("auto", "cpu", "cuda")
MAX_SEED = 2**32 - 1  # numpy's and torch's seeds agree below this


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

    # Divergence: a finite loss can still mean a lost run. A saturated D (mean D(x) > 0.99 and D(G(z)) < 0.01;
    # probabilistic losses only) or |loss/g| above g_loss_limit, held for `divergence_window` G steps in a row,
    # ends the run as diverged; 0 turns both rules off. Measured on mnist-5k: healthy runs (gan, dcgan, wgan-gp
    # at lr 1e-5 to 3e-3, gan and wgan-gp for 50 epochs) saturate D for at most 6 G steps in a row and keep
    # |loss/g| below 30; gan at lr 10 or 100 has |loss/g| above 1e6 from its first G step.
    divergence_window: int = 20  # a third of an epoch of gan at batch 64 on mnist-5k (62 G steps)
    g_loss_limit: float = 1000.0  # 30x the largest healthy |loss/g| measured (29.9: dcgan at lr 3e-3)

    # Run.
    seed: int = 0
    device: str = "auto"
    log_every: int = 20  # G steps per copy of the step metrics to the host (the only sync in the loop) and per
    # point of each step curve in MLflow (the window's mean)
    n_samples: int = 64  # fixed-noise images in each epoch's sample grid

    def __post_init__(self) -> None:
        check_types(self)
        _check(1 <= self.epochs <= 1_000_000, "epochs", self.epochs, "must be in [1, 1000000]")
        _check(2 <= self.batch_size <= 65536, "batch_size", self.batch_size, "must be in [2, 65536]")
        _check(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"must be one of {', '.join(OPTIMIZERS)}")
        for name in ("lr", "lr_g", "lr_d"):
            value = getattr(self, name)
            _check(value is None or 0 < value <= 1000, name, value, "must be in (0, 1000]")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", self.betas,
               "must be two values in [0, 1)")
        _check(0 <= self.dropout < 1, "dropout", self.dropout, "must be in [0, 1)")
        _check(0 <= self.label_smoothing <= 0.5, "label_smoothing", self.label_smoothing, "must be in [0, 0.5]")
        _check(1 <= self.n_critic <= 100, "n_critic", self.n_critic, "must be in [1, 100]")
        _check(1 <= self.z_dim <= 4096, "z_dim", self.z_dim, "must be in [1, 4096]")
        _check(1 <= len(self.hidden) <= 2 and all(1 <= h <= 16384 for h in self.hidden), "hidden", self.hidden,
               "must be one or two widths in [1, 16384]")
        _check(2 <= self.maxout_pieces <= 16, "maxout_pieces", self.maxout_pieces, "must be in [2, 16]")
        _check(1 <= self.width <= 1024, "width", self.width, "must be in [1, 1024]")
        _check(self.clip_value > 0, "clip_value", self.clip_value, "must be > 0")
        _check(self.gp_weight >= 0, "gp_weight", self.gp_weight, "must be >= 0")
        _check(self.r1_gamma >= 0, "r1_gamma", self.r1_gamma, "must be >= 0")
        _check(self.divergence_window >= 0, "divergence_window", self.divergence_window, "must be >= 0 (0: off)")
        _check(self.g_loss_limit > 0, "g_loss_limit", self.g_loss_limit, "must be > 0")
        _check(0 <= self.seed <= MAX_SEED, "seed", self.seed, f"must be in [0, {MAX_SEED}]")
        _check(self.device in DEVICES, "device", self.device, f"must be one of {', '.join(DEVICES)}")
        _check(1 <= self.log_every <= 10000, "log_every", self.log_every, "must be in [1, 10000]")
        _check(1 <= self.n_samples <= 1024, "n_samples", self.n_samples, "must be in [1, 1024]")

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


def check_types(instance: Any) -> None:
    """Check every field of a dataclass against its annotation, so a string, a fraction, a NaN or an infinity
    from a study file or an option is refused by name before any range check compares it. Lists (TOML arrays)
    become tuples; ints are taken where a float is asked for."""
    hints = typing.get_type_hints(type(instance))
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        object.__setattr__(instance, f.name, _typed(f.name, value, hints[f.name]))


def _typed(name: str, value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _typed(name, value, inner)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            raise ConfigError(f"{name} must have {len(items)} values, got {value!r}")
        return tuple(_typed(name, v, a) for v, a in zip(value, items))
    if hint is bool:
        _check(isinstance(value, bool), name, value, "must be true or false")
    elif hint is int:
        _check(isinstance(value, int) and not isinstance(value, bool), name, value, "must be an integer")
    elif hint is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), name, value, "must be a number")
        _check(math.isfinite(value), name, value, "must be a finite number")
        return float(value)
    elif hint is str:
        _check(isinstance(value, str), name, value, "must be a string")
    elif origin is collections.abc.Mapping:
        _check(isinstance(value, collections.abc.Mapping), name, value, "must be a table")
    elif isinstance(hint, type) and hint is not typing.Any:
        _check(isinstance(value, hint), name, value, f"must be a {hint.__name__}")
    return value
