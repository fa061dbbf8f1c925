"""Training speed, side by side in one process: images seen by D per second for the seed-style loop, a minimal
loop with resident data, and gansweep's trainer, for `gan`, `dcgan` and `wgan-gp` at batch 64 on mnist-5k.

Every loop builds the same G and D from the variant's parts and computes the same losses and penalty; they differ
only in what surrounds the step. `ratio` is gansweep over the seed-style loop. Run with `make bench`
(`make bench ARGS='--device cpu --quick'` for the short form); prints a table and, on its last line, one JSON
object. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision import transforms

from gansweep.config import DataConfig, TrainConfig
from gansweep.data import Dataset, load_dataset
from gansweep.trainer import g_steps_per_epoch, resolve_device, train
from gansweep.variants import Variant, get_variant

VARIANTS = ("gan", "dcgan", "wgan-gp")
BATCH = 64


class SeedStyleImages(torch.utils.data.Dataset):
    """What a tutorial notebook does: uint8 images, ToTensor and Normalize per sample."""

    def __init__(self, images: np.ndarray):
        self.images = images  # (N, H, W, C) uint8
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        return self.transform(self.images[i])


def _step_parts(variant: Variant, config: TrainConfig, data: Dataset):
    torch.manual_seed(config.seed)
    g, d = variant.build(config, data.record.image_shape, data.record.n_classes)
    g, d = g.to(data.train_images.device), d.to(data.train_images.device)

    def optimizer(params, lr):
        if config.optimizer == "rmsprop":
            return torch.optim.RMSprop(params, lr=lr)
        return torch.optim.Adam(params, lr=lr, betas=config.betas)

    return g, d, optimizer(g.parameters(), config.g_lr), optimizer(d.parameters(), config.d_lr)


def _d_step(variant, config, g, d, opt_d, real: Tensor, rng: torch.Generator) -> Tensor:
    loss, regularizer = variant.loss_part, variant.regularizer_part
    with torch.no_grad():
        fake = g(torch.randn(len(real), config.z_dim, device=real.device, generator=rng))
    loss_d = loss.d_loss(d(real), d(fake), 1.0 - config.label_smoothing)
    penalty = regularizer.penalty(d, real, fake, config, rng)
    if penalty is not None:
        loss_d = loss_d + penalty
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    regularizer.after_step(d, config)
    return loss_d


def _g_step(variant, config, g, d, opt_g, rng: torch.Generator, device: torch.device) -> Tensor:
    loss_g = variant.loss_part.g_loss(d(g(torch.randn(BATCH, config.z_dim, device=device, generator=rng))))
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    return loss_g


def seed_style(variant: Variant, config: TrainConfig, data: Dataset, uint8: np.ndarray, g_steps: int) -> float:
    """DataLoader over per-sample transforms, `.item()` after every step, batches moved to the device."""
    g, d, opt_g, opt_d = _step_parts(variant, config, data)
    device, rng = data.train_images.device, torch.Generator(device=data.train_images.device)
    loader = DataLoader(SeedStyleImages(uint8), batch_size=BATCH, shuffle=True, drop_last=True)
    batches, seen, done = iter(loader), 0, 0
    start = time.perf_counter()
    while done < g_steps:
        for _ in range(config.n_critic):
            try:
                real = next(batches)
            except StopIteration:
                batches = iter(loader)
                real = next(batches)
            real = real.to(device)
            _d_step(variant, config, g, d, opt_d, real, rng).item()
            seen += len(real)
        _g_step(variant, config, g, d, opt_g, rng, device).item()
        done += 1
    return seen / _elapsed(start, device)


def minimal(variant: Variant, config: TrainConfig, data: Dataset, g_steps: int) -> float:
    """Resident data indexed by a permutation, eager steps, no host sync: the step and nothing else."""
    g, d, opt_g, opt_d = _step_parts(variant, config, data)
    device, rng = data.train_images.device, torch.Generator(device=data.train_images.device)
    n, seen, done = len(data.train_images), 0, 0
    start = time.perf_counter()
    while done < g_steps:
        order = torch.randperm(n, device=device, generator=rng)
        for first in range(0, n - BATCH * config.n_critic + 1, BATCH * config.n_critic):
            for c in range(config.n_critic):
                real = data.train_images[order[first + c * BATCH:first + (c + 1) * BATCH]]
                _d_step(variant, config, g, d, opt_d, real, rng)
                seen += BATCH
            _g_step(variant, config, g, d, opt_g, rng, device)
            done += 1
            if done == g_steps:
                break
    return seen / _elapsed(start, device)


def gansweep_run(variant: Variant, config: TrainConfig, data: Dataset) -> float:
    """gansweep's trainer, one run, no hooks."""
    start = time.perf_counter()
    result = train(variant, config, data)
    return result.images_seen / _elapsed(start, data.train_images.device)


def _elapsed(start: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(name: str, data: Dataset, uint8: np.ndarray, epochs: int) -> dict[str, float]:
    variant = get_variant(name)
    config = variant.config(epochs=epochs, batch_size=BATCH, device=data.train_images.device.type)
    g_steps = g_steps_per_epoch(config, len(data.train_images)) * epochs
    loops: dict[str, Callable[[], float]] = {
        "seed_style": lambda: seed_style(variant, config, data, uint8, g_steps),
        "minimal": lambda: minimal(variant, config, data, g_steps),
        "gansweep": lambda: gansweep_run(variant, config, data),
    }
    row = {loop: round(fn(), 1) for loop, fn in loops.items()}
    row["ratio"] = round(row["gansweep"] / row["seed_style"], 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="one epoch of mnist-5k per loop instead of three")
    args = parser.parse_args()
    device = resolve_device(args.device)
    data = load_dataset(DataConfig(dataset="mnist-5k"), device)
    # the seed-style loop reads the same images the way a notebook does: uint8, (N, H, W, C)
    uint8 = ((data.train_images.cpu() + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    minimal(get_variant("gan"), get_variant("gan").config(), data, 5)  # warm-up: allocator, kernels, threads
    epochs = 1 if args.quick else 3
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {BATCH}, "
          f"{epochs} epoch(s) of mnist-5k per loop; images seen by D per second")
    print(f"{'variant':<9} {'seed-style':>11} {'minimal':>9} {'gansweep':>9} {'ratio':>6}")
    report: dict[str, object] = {"device": device.type, "torch": torch.__version__}
    for name in VARIANTS:
        row = measure(name, data, uint8, epochs)
        report[name] = row
        print(f"{name:<9} {row['seed_style']:>11,.0f} {row['minimal']:>9,.0f} {row['gansweep']:>9,.0f} "
              f"{row['ratio']:>6.2f}", flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
