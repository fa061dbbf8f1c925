"""How a feature network is trained: on digits made to look like what generators draw (speckle, noise, blur), and
with a rejection class for images that are not digits at all, so that noise scores as "not a digit" rather than
as the class a clean-only classifier happens to put it in (an "8", for MNIST).

Every batch is clean and corrupted training images with their labels, plus `Recipe.reject_share` as many
non-digits labelled with the extra class: uniform and Gaussian noise, dense salt-and-pepper, flat images and smooth
random blobs. `measure` reports what the README and `gansweep list datasets` state about the network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from gansweep.classifier import Classifier, FeatureNet, digit_accuracy, weights_checksum
from gansweep.data import Dataset

__all__ = ["Recipe", "RECIPE", "corrupt", "not_digits", "salt", "train_feature_net", "train_classifier", "measure"]


@dataclass(frozen=True)
class Recipe:
    epochs: int = 8
    batch: int = 128
    lr: float = 2e-3  # Adam, cosine-annealed to 0 over the epochs
    shift: int = 2  # random translation in pixels, one offset per batch
    corrupt_share: float = 0.5  # of the digits in a batch, this share is corrupted (salt, noise or blur)
    max_salt: float = 0.15  # a corrupted digit gets up to this share of its pixels set white
    max_noise: float = 0.4  # ... or Gaussian noise of up to this sigma (images span [-1, 1])
    max_blur: float = 1.2  # ... or a Gaussian blur of up to this sigma in pixels
    reject_share: float = 0.25  # non-digits added per digit in a batch
    seed: int = 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


RECIPE = Recipe()


def salt(images: Tensor, share: Tensor | float, rng: torch.Generator) -> Tensor:
    """Set a random `share` of each image's pixels white (per image when `share` is a column tensor)."""
    mask = torch.rand(images.shape, generator=rng).to(images.device) < torch.as_tensor(share).to(images.device)
    return torch.where(mask, torch.ones_like(images), images)


def _blur(images: Tensor, sigma: float) -> Tensor:
    radius = 3
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-x**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    padded = F.pad(images, (radius,) * 4, mode="replicate")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def corrupt(images: Tensor, recipe: Recipe, rng: torch.Generator) -> Tensor:
    """A third of the chosen images salted, a third noised, a third blurred, each with a random strength."""
    n = len(images)
    chosen = torch.rand(n, generator=rng) < recipe.corrupt_share
    kind = torch.randint(0, 3, (n,), generator=rng)
    strength = torch.rand(n, 1, 1, 1, generator=rng)
    out = images.clone()
    for k, apply in enumerate((
            lambda x, s: salt(x, s * recipe.max_salt, rng),
            lambda x, s: (x + torch.randn(x.shape, generator=rng).to(x.device) * s.to(x.device)
                          * recipe.max_noise).clamp(-1, 1),
            lambda x, s: _blur(x, 0.3 + float(s.mean()) * (recipe.max_blur - 0.3)))):
        idx = torch.nonzero(chosen & (kind == k)).flatten()
        if len(idx):
            out[idx.to(images.device)] = apply(images[idx.to(images.device)], strength[idx])
    return out


def not_digits(n: int, shape: tuple[int, ...], rng: torch.Generator) -> Tensor:
    """n images that are no class at all, in [-1, 1]: five kinds in equal shares."""
    c, h, w = shape
    kind = torch.arange(n) % 5
    uniform = torch.rand(n, c, h, w, generator=rng) * 2 - 1
    centre, sigma = torch.rand(n, 1, 1, 1, generator=rng) * 2 - 1, 0.2 + 0.8 * torch.rand(n, 1, 1, 1, generator=rng)
    gaussian = (centre + sigma * torch.randn(n, c, h, w, generator=rng)).clamp(-1, 1)
    density = 0.2 + 0.6 * torch.rand(n, 1, 1, 1, generator=rng)
    speckle = torch.where(torch.rand(n, c, h, w, generator=rng) < density, 1.0, -1.0)
    flat = (torch.rand(n, 1, 1, 1, generator=rng) * 2 - 1).expand(n, c, h, w)
    coarse = torch.rand(n, c, 4, 4, generator=rng) * 2 - 1
    blobs = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False).clamp(-1, 1)
    choices = torch.stack([uniform, gaussian, speckle, flat.contiguous(), blobs])
    return choices[kind, torch.arange(n)]


def _shift(x: Tensor, shift: int, rng: torch.Generator) -> Tensor:
    dx, dy = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=rng))
    return torch.roll(F.pad(x, (shift,) * 4, value=-1.0), (dy, dx), (2, 3))[..., shift:-shift, shift:-shift]


def train_feature_net(data: Dataset, recipe: Recipe = RECIPE) -> FeatureNet:
    """A FeatureNet trained by `recipe` on the train split; deterministic for one machine and thread count."""
    torch.manual_seed(recipe.seed)
    device = data.train_images.device
    n_classes, shape = data.record.n_classes, data.record.image_shape
    net = FeatureNet(shape[0], n_classes).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=recipe.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, recipe.epochs)
    rng = torch.Generator().manual_seed(recipe.seed)
    n, batch = len(data.train_images), min(recipe.batch, len(data.train_images))
    n_reject = max(1, round(batch * recipe.reject_share))
    reject_labels = torch.full((n_reject,), n_classes, device=device)
    for _ in range(recipe.epochs):
        net.train()
        order = torch.randperm(n, generator=rng).to(device)
        for start in range(0, n - batch + 1, batch):
            idx = order[start:start + batch]
            digits = corrupt(_shift(data.train_images[idx], recipe.shift, rng), recipe, rng)
            images = torch.cat([digits, not_digits(n_reject, shape, rng).to(device)])
            loss = F.cross_entropy(net(images), torch.cat([data.train_labels[idx], reject_labels]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
    return net.eval()


@torch.no_grad()
def measure(net: FeatureNet, data: Dataset, seed: int = 1) -> dict[str, float]:
    """Held-out accuracy clean and under 5% salt noise, and what the network calls held-out noise."""
    rng = torch.Generator().manual_seed(seed)
    images, labels = data.test_images, data.test_labels
    n_classes = data.record.n_classes
    noise = torch.rand(len(images), *images.shape[1:], generator=rng).to(images.device) * 2 - 1
    noise_logits = net(noise)
    return {"accuracy": digit_accuracy(net, images, labels),
            "accuracy_salt_5pct": digit_accuracy(net, salt(images, 0.05, rng), labels),
            "accuracy_blur_1px": digit_accuracy(net, _blur(images, 1.0), labels),
            "uniform_noise_rejected": float((noise_logits.argmax(1) == n_classes).float().mean()),
            "uniform_noise_top_digit_share": float(
                torch.bincount(noise_logits[:, :n_classes].argmax(1), minlength=n_classes).max() / len(noise)),
            "digits_rejected": float((net(images).argmax(1) == n_classes).float().mean())}


def train_classifier(data: Dataset, recipe: Recipe = RECIPE) -> Classifier:
    """A network trained here on `data`, measured on its held-out split."""
    net = train_feature_net(data, recipe)
    return Classifier(net, data.record.name, data.record.checksum,
                      digit_accuracy(net, data.test_images, data.test_labels), weights_checksum(net), False)
