"""Generator and discriminator architectures, unconditional or class-conditional.

Every G maps (z, labels) to images in [-1, 1]; every D maps (images, labels) to one raw score per image.
`labels` is ignored (and may be None) when the network was built with n_classes = 0.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gansweep.config import TrainConfig
from gansweep.errors import ConfigError

__all__ = ["Architecture", "ARCHITECTURES", "Conditioning", "CONDITIONINGS", "generate", "chunks", "Dropout",
           "dropout_masks", "dropout_shapes"]

ImageShape = tuple[int, int, int]  # (channels, height, width)
# Images per forward pass wherever a network sees many at once: memory stays bounded at any n, and on the CPU a
# chunk's activations stay in cache (at 1,000 the feature network's first layer alone is 100 MB, and featurising
# and sampling with a convolutional G ran at half the speed on 2 cores; the features and images came out the same
# to the bit on that CPU, D's outputs for `d_overfit` in the 7th digit).
CHUNK = 250


def chunks(n: int) -> list[slice]:
    """Slices of at most CHUNK that cover n images in order."""
    return [slice(i, i + CHUNK) for i in range(0, n, CHUNK)]


@torch.no_grad()
def generate(g: nn.Module, z: Tensor, labels: Tensor | None = None) -> Tensor:
    """G's images for `z`, with BatchNorm in inference mode and in chunks; G is back in the mode it was in
    afterwards."""
    was_training = g.training
    g.eval()
    try:
        return torch.cat([g(z[part], None if labels is None else labels[part]) for part in chunks(len(z))])
    finally:
        g.train(was_training)


_masks: list[Iterator[Tensor]] = []  # the masks handed in by the innermost dropout_masks, if any


class Dropout(nn.Dropout):
    """nn.Dropout, except inside `dropout_masks`: there each call multiplies by the next mask handed in. The
    trainer draws the masks itself, from each run's own generator, so that K runs stepped together under vmap
    drop the same units as each run alone (inside vmap, torch's dropout can only draw from one shared stream)."""

    def forward(self, x: Tensor) -> Tensor:
        if not _masks or not self.training:
            return super().forward(x)
        return x * next(_masks[-1])


@contextlib.contextmanager
def dropout_masks(masks: Iterator[Tensor]) -> Iterator[None]:
    """Every Dropout called inside takes its mask from `masks`, in call order."""
    _masks.append(masks)
    try:
        yield
    finally:
        _masks.pop()


def dropout_shapes(d: nn.Module, x: Tensor, labels: Tensor | None) -> list[torch.Size]:
    """The mask shapes one training-mode call of `d` on `x` consumes, in order. `d` runs once in inference
    mode (nothing in it changes: no power iteration, no statistics) and is back in its mode afterwards."""
    shapes: list[torch.Size] = []
    hooks = [m.register_forward_pre_hook(lambda _, args: shapes.append(args[0].shape))
             for m in d.modules() if isinstance(m, Dropout)]
    was_training = d.training
    d.eval()
    try:
        with torch.no_grad():
            d(x, labels)
    finally:
        d.train(was_training)
        for hook in hooks:
            hook.remove()
    return shapes


@dataclass(frozen=True)
class Architecture:
    name: str
    summary: str
    build_g: Callable[[TrainConfig, ImageShape, int], nn.Module]
    build_d: Callable[[TrainConfig, ImageShape, int], nn.Module]
    reads: tuple[str, ...]  # the TrainConfig fields its networks are built from (beyond z_dim and dropout)


@dataclass(frozen=True)
class Conditioning:
    name: str
    summary: str
    conditional: bool

    def n_classes(self, dataset_classes: int) -> int:
        """How many label embeddings the networks get: 0 builds them unconditional."""
        return dataset_classes if self.conditional else 0


class _WithLabels(nn.Module):
    """Concatenates a label embedding to the flat input; a no-op for unconditional networks."""

    def __init__(self, n_classes: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_classes, dim) if n_classes else None

    def forward(self, x: Tensor, labels: Tensor | None) -> Tensor:
        """`labels` are class indices, or (N, n_classes) weights that blend the class embeddings (interpolation)."""
        if self.embedding is None:
            return x
        embedded = labels @ self.embedding.weight if labels.is_floating_point() else self.embedding(labels)
        return torch.cat([x, embedded], dim=1)


class _Maxout(nn.Module):
    """max over `pieces` linear maps (Goodfellow et al. 2013), the units of the original GAN's D."""

    def __init__(self, n_in: int, n_out: int, pieces: int):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out * pieces)
        self.n_out, self.pieces = n_out, pieces

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x).view(-1, self.n_out, self.pieces).amax(dim=2)


class MLPGenerator(nn.Module):
    def __init__(self, config: TrainConfig, shape: ImageShape, n_classes: int):
        super().__init__()
        self.shape = shape
        self.labels = _WithLabels(n_classes, n_classes)
        layers: list[nn.Module] = []
        width = config.z_dim + n_classes
        for hidden in config.hidden:
            layers.append(nn.Linear(width, hidden))
            if config.batchnorm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(nn.LeakyReLU(0.2))
            width = hidden
        layers += [nn.Linear(width, math.prod(shape)), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.body(self.labels(z, labels)).view(-1, *self.shape)


class MLPDiscriminator(nn.Module):
    def __init__(self, config: TrainConfig, shape: ImageShape, n_classes: int):
        super().__init__()
        self.labels = _WithLabels(n_classes, n_classes)
        layers: list[nn.Module] = []
        width = math.prod(shape) + n_classes
        for hidden in reversed(config.hidden):
            if config.maxout:
                layers.append(_Maxout(width, hidden, config.maxout_pieces))
            else:
                layers += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
            if config.dropout:
                layers.append(Dropout(config.dropout))
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.body(self.labels(x.flatten(1), labels)).squeeze(1)


def _halvings(size: int) -> int:
    """How many stride-2 stages take a side of `size` down to a 4..7 pixel base: 28 -> 2 (7), 32 -> 3 (4)."""
    n = 0
    while size % 2 == 0 and size // 2 >= 4:
        size //= 2
        n += 1
    if n == 0 or size > 7:
        raise ConfigError(f"dcgan needs square images whose side halves to 4..7 pixels (28, 32, 64), got {size}")
    return n


def _dcgan_init(module: nn.Module) -> None:
    """N(0, 0.02) weights as in Radford et al. 2016."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    def __init__(self, config: TrainConfig, shape: ImageShape, n_classes: int):
        super().__init__()
        channels, size, _ = shape
        stages = _halvings(size)
        self.base, self.base_channels = size >> stages, config.width << (stages - 1)
        self.labels = _WithLabels(n_classes, n_classes)
        self.project = nn.Linear(config.z_dim + n_classes, self.base_channels * self.base ** 2)
        layers: list[nn.Module] = [nn.BatchNorm2d(self.base_channels) if config.batchnorm else nn.Identity(),
                                   nn.ReLU()]
        width = self.base_channels
        for _ in range(stages - 1):
            layers.append(nn.ConvTranspose2d(width, width // 2, 4, 2, 1))
            if config.batchnorm:
                layers.append(nn.BatchNorm2d(width // 2))
            layers.append(nn.ReLU())
            width //= 2
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        _dcgan_init(self)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        h = self.project(self.labels(z, labels))
        return self.body(h.view(-1, self.base_channels, self.base, self.base))


class DCGANDiscriminator(nn.Module):
    def __init__(self, config: TrainConfig, shape: ImageShape, n_classes: int):
        super().__init__()
        channels, size, _ = shape
        stages = _halvings(size)
        # A conditional D sees its label as one more image channel, a learned map per class.
        self.label_map = nn.Embedding(n_classes, size * size) if n_classes else None
        layers: list[nn.Module] = []
        width_in, width = channels + (1 if n_classes else 0), config.width
        for _ in range(stages):
            layers += [nn.Conv2d(width_in, width, 4, 2, 1), nn.LeakyReLU(0.2)]
            if config.dropout:
                layers.append(Dropout(config.dropout))
            width_in, width = width, width * 2
        layers += [nn.Flatten(), nn.Linear(width_in * (size >> stages) ** 2, 1)]
        self.body = nn.Sequential(*layers)
        _dcgan_init(self)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.label_map is not None:
            x = torch.cat([x, self.label_map(labels).view(-1, 1, *x.shape[2:])], dim=1)
        return self.body(x).squeeze(1)


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture("mlp", "dense G and D, 1-2 hidden layers, BatchNorm in G, dropout or maxout in D",
                 MLPGenerator, MLPDiscriminator, ("hidden", "batchnorm", "maxout", "maxout_pieces")),
    Architecture("dcgan", "transposed-conv G, strided-conv D (Radford et al. 2016), for 28x28 and 32x32",
                 DCGANGenerator, DCGANDiscriminator, ("width", "batchnorm")),
)}

CONDITIONINGS: dict[str, Conditioning] = {c.name: c for c in (
    Conditioning("none", "unconditional", conditional=False),
    Conditioning("class", "label embedding concatenated to G's noise and D's input", conditional=True),
)}
