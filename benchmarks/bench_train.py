"""Training speed, side by side in one process: images seen by D per second for the seed-style loop, a minimal
loop with resident data, gansweep's trainer (one run) and gansweep populations (aggregate over K members: 4 on
the CPU, 8 and 64 on CUDA), for `gan`, `dcgan` and `wgan-gp` at batch 64 on mnist-5k; on CUDA, where the trainer
captures its step in a CUDA graph, also one run and the largest population with the step eager, and both
captured from their first copy of step metrics on (`steady`: past the warm-up steps and the capture, which a run
pays once); then a small study's share of wall time outside training steps.

Every loop builds the same G and D from the variant's parts and computes the same losses and penalty; they differ
only in what surrounds the step. Each is timed from its first step to its last (G, D and optimizers are built
before), in `--rounds` interleaved rounds of every loop, and its fastest round is kept: a busy machine only ever
slows a loop down, and interleaving spreads a slow spell over all of them instead of one. `ratio` is gansweep over
the seed-style loop. Run with `make bench`
(`make bench ARGS='--device cpu --quick'` for the short form); prints a table and, on its last line, one JSON
object. Asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

from gansweep import step_graph
from gansweep.config import DataConfig, TrainConfig
from gansweep.data import Dataset, load_dataset
from gansweep.hooks import Hook, TrainResult, TrainState
from gansweep.mnist_wheel import write_idx
from gansweep.trainer import g_steps_per_epoch, resolve_device, train, train_population
from gansweep.variants import Variant, get_variant

VARIANTS = ("gan", "dcgan", "wgan-gp")
BATCH = 64
# --quick: half the images for the convolutional variants (ten times slower a step on the CPU), so that it all,
# the study's timing included, takes under 4 minutes on 2 CPU cores
QUICK_IMAGES = {"dcgan": 2000, "wgan-gp": 2000}


def seed_style_dataset(images: np.ndarray, labels: np.ndarray, root: Path) -> torchvision.datasets.MNIST:
    """What a tutorial notebook uses: torchvision's MNIST (a PIL image per sample), ToTensor and Normalize per
    sample; here over mnist-5k's training split, written as MNIST's raw files."""
    empty = (np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64))
    write_idx(root / "MNIST" / "raw", {"train": (images, labels), "validation": empty, "test": empty})
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    return torchvision.datasets.MNIST(str(root), train=True, download=False, transform=transform)


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
    alpha = torch.rand(len(real), device=real.device, generator=rng) if regularizer.draws_alpha else None
    penalty = regularizer.penalty(d, real, fake, alpha, torch.tensor(regularizer.strength(config)))
    if penalty is not None:
        loss_d = loss_d + penalty
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    regularizer.constrain([p.detach().unsqueeze(0) for p in d.parameters()], torch.tensor([config.clip_value]))
    return loss_d


def _g_step(variant, config, g, d, opt_g, rng: torch.Generator, device: torch.device) -> Tensor:
    loss_g = variant.loss_part.g_loss(d(g(torch.randn(BATCH, config.z_dim, device=device, generator=rng))))
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    return loss_g


def seed_style(variant: Variant, config: TrainConfig, data: Dataset, images: torchvision.datasets.MNIST,
               g_steps: int) -> float:
    """DataLoader over per-sample transforms, `.item()` after every step, batches moved to the device."""
    g, d, opt_g, opt_d = _step_parts(variant, config, data)
    device, rng = data.train_images.device, torch.Generator(device=data.train_images.device)
    loader = DataLoader(images, batch_size=BATCH, shuffle=True, drop_last=True)
    batches, seen, done = iter(loader), 0, 0
    start = time.perf_counter()
    while done < g_steps:
        for _ in range(config.n_critic):
            try:
                real, _ = next(batches)
            except StopIteration:
                batches = iter(loader)
                real, _ = next(batches)
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


class _Clock(Hook):
    """When the loop starts (the other loops, too, build G, D and their optimizers before their clock starts), and
    where it stands at the first copy of step metrics to the host, `log_every` G steps in: on CUDA, past the
    eager warm-up steps and the capture, which a run pays once."""

    def on_start(self, state: TrainState) -> None:
        self.start, self.settled = time.perf_counter(), None

    def on_log(self, state: TrainState, log: object) -> None:
        if self.settled is None:  # the copy has synced with the device
            self.settled = (time.perf_counter(), state.images_seen)


Rates = tuple[float, float | None]  # images per second over the whole loop, and from the first metrics on


def _rates(clocks: list[_Clock], results: list[TrainResult], device: torch.device) -> Rates:
    """All members' images per second, from the first step and from the first copy of step metrics (None where
    that copy came at the end, or a member ended before it)."""
    elapsed, images = _elapsed(clocks[0].start, device), sum(r.images_seen for r in results)
    if any(c.settled is None for c in clocks):
        return images / elapsed, None
    after = images - sum(c.settled[1] for c in clocks)
    settled_for = clocks[0].start + elapsed - clocks[0].settled[0]
    return images / elapsed, (after / settled_for if after else None)


def gansweep_run(variant: Variant, config: TrainConfig, data: Dataset) -> Rates:
    """gansweep's trainer, one run, no hooks but the clock."""
    clock = _Clock()
    return _rates([clock], [train(variant, config, data, [clock])], data.train_images.device)


def population(variant: Variant, config: TrainConfig, data: Dataset, k: int) -> Rates:
    """K members (seeds 0..K-1) in one population, no hooks but the clock; images seen by all members per
    second."""
    configs = [config.replace(seed=seed) for seed in range(k)]
    clocks = [_Clock() for _ in configs]
    results = train_population(variant, configs, data, [[c] for c in clocks], [None] * k)
    return _rates(clocks, results, data.train_images.device)


def eager(loop: Callable[[], Rates]) -> Rates:
    """`loop` with the step not captured: what the CUDA graph gains."""
    capture, step_graph.CAPTURE_ON_CUDA = step_graph.CAPTURE_ON_CUDA, False
    try:
        return loop()
    finally:
        step_graph.CAPTURE_ON_CUDA = capture


def study_share(device: torch.device, epochs: int) -> dict[str, float]:
    """The `lr-sensitivity` study for `gan` alone (6 trials, mnist-5k, population auto) into a temporary store:
    its wall time, and the share of it spent outside training steps (setup, scoring, sample grids, checkpoints,
    tracking), with the time the loop spent handing step metrics to MLflow. The steps are timed by wrapping
    `StepGraph.__call__` (with a device sync on CUDA), the logging by wrapping `MlflowHook.on_log`."""
    from gansweep.catalog import find_spec
    from gansweep.spec import load_spec
    from gansweep.study import StudyOptions, run_study
    from gansweep.mlflow_hook import MlflowHook

    spent = {"steps": 0.0, "logging": 0.0}
    step, on_log = step_graph.StepGraph.__call__, MlflowHook.on_log

    def timed_step(self: step_graph.StepGraph, *args: object) -> Tensor:
        start = time.perf_counter()
        out = step(self, *args)
        spent["steps"] += _elapsed(start, device)
        return out

    def timed_log(self: MlflowHook, *args: object) -> None:
        start = time.perf_counter()
        on_log(self, *args)
        spent["logging"] += time.perf_counter() - start

    step_graph.StepGraph.__call__, MlflowHook.on_log = timed_step, timed_log
    try:
        with tempfile.TemporaryDirectory(prefix="gansweep-bench-store-") as store:
            start = time.perf_counter()
            outcome = run_study(load_spec(find_spec("lr-sensitivity")),
                                StudyOptions(variants=("gan",), dataset="mnist-5k", epochs=epochs, seeds=(0,),
                                             device=device.type, store=store, progress=False))
            wall = time.perf_counter() - start
    finally:
        step_graph.StepGraph.__call__, MlflowHook.on_log = step, on_log
    return {"trials": outcome.ran, "wall_s": round(wall, 1), "steps_s": round(spent["steps"], 1),
            "logging_s": round(spent["logging"], 2), "outside_share": round(1 - spent["steps"] / wall, 3)}


def _elapsed(start: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(name: str, data: Dataset, images: torchvision.datasets.MNIST, epochs: int, sizes: tuple[int, ...],
            n_images: int, rounds: int) -> dict[str, object]:
    """Every loop on the first `n_images` training images, `rounds` times in turn; each loop's fastest round."""
    data = dataclasses.replace(data, train_images=data.train_images[:n_images],
                               train_labels=data.train_labels[:n_images])
    images = Subset(images, range(n_images))
    variant = get_variant(name)
    config = variant.config(epochs=epochs, batch_size=BATCH, device=data.train_images.device.type)
    g_steps = g_steps_per_epoch(config, n_images) * epochs
    loops: dict[str, Callable[[], Rates]] = {
        "seed_style": lambda: (seed_style(variant, config, data, images, g_steps), None),
        "minimal": lambda: (minimal(variant, config, data, g_steps), None),
        "gansweep": lambda: gansweep_run(variant, config, data),
        **{f"population {k}": functools.partial(population, variant, config, data, k) for k in sizes},
    }
    cuda = data.train_images.device.type == "cuda"
    if cuda:  # the baseline of the captured step: the same loops, eager
        loops["gansweep eager"] = functools.partial(eager, loops["gansweep"])
        loops[f"population {max(sizes)} eager"] = functools.partial(eager, loops[f"population {max(sizes)}"])
    best = dict.fromkeys(loops, 0.0)
    steady: dict[str, float | None] = dict.fromkeys(loops)
    for _ in range(rounds):
        for loop, fn in loops.items():
            whole, settled = fn()
            best[loop] = max(best[loop], whole)
            if settled is not None:
                steady[loop] = round(max(steady[loop] or 0.0, settled), 1)
    row: dict[str, object] = {"images": n_images,
                              **{loop: round(best[loop], 1) for loop in ("seed_style", "minimal", "gansweep")}}
    row["ratio"] = round(row["gansweep"] / row["seed_style"], 2)
    populations = [{"k": k, "images_per_s": round(best[f"population {k}"], 1)} for k in sizes]
    row["population"] = populations[0] if len(populations) == 1 else populations
    if cuda:
        largest = f"population {max(sizes)}"
        row["eager"] = {"gansweep": round(best["gansweep eager"], 1),
                        "population": {"k": max(sizes), "images_per_s": round(best[f"{largest} eager"], 1)}}
        row["steady"] = {"gansweep": steady["gansweep"],
                         "population": {"k": max(sizes), "images_per_s": steady[largest]}}
    return row


def _figure(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:,.0f}"


def _rounds(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 100, got {text!r}")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--quick", action="store_true",
                        help="one epoch per loop instead of three, and for the convolutional variants half the images")
    parser.add_argument("--rounds", type=_rounds, default=3, metavar="N",
                        help="times each loop is run, interleaved with the others; its fastest is kept (default 3)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    data = load_dataset(DataConfig(dataset="mnist-5k"), device)
    # the seed-style loop reads the same images the way a notebook does, from MNIST's files
    uint8 = ((data.train_images.cpu() + 1) * 127.5).round().to(torch.uint8)[:, 0].numpy()
    folder = tempfile.TemporaryDirectory(prefix="gansweep-bench-")
    images = seed_style_dataset(uint8, data.train_labels.cpu().numpy(), Path(folder.name))
    minimal(get_variant("gan"), get_variant("gan").config(), data, 5)  # warm-up: allocator, kernels, threads
    epochs = 1 if args.quick else 3
    sizes = (4,) if device.type == "cpu" else (8, 64)
    n_images = {name: QUICK_IMAGES.get(name, len(data.train_images)) if args.quick else len(data.train_images)
                for name in VARIANTS}
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {BATCH}, "
          f"{epochs} epoch(s) per loop, fastest of {args.rounds} rounds, of mnist-5k's first "
          + ", ".join(f"{n:,} images ({name})" for name, n in n_images.items()) + "; images seen by D per second")
    print(f"{'variant':<9} {'seed-style':>11} {'minimal':>9} {'gansweep':>9} {'ratio':>6}"
          + "".join(f" {f'K={k} (all)':>12}" for k in sizes)
          + (f" {'gansweep eager':>15} {f'K={max(sizes)} eager':>12} {'gansweep steady':>16}"
             f" {f'K={max(sizes)} steady':>13}" if device.type == "cuda" else ""))
    report: dict[str, object] = {"device": device.type, "torch": torch.__version__, "epochs": epochs,
                                 "rounds": args.rounds}
    for name in VARIANTS:
        row = measure(name, data, images, epochs, sizes, n_images[name], args.rounds)
        report[name] = row
        populations = row["population"] if isinstance(row["population"], list) else [row["population"]]
        print(f"{name:<9} {row['seed_style']:>11,.0f} {row['minimal']:>9,.0f} {row['gansweep']:>9,.0f} "
              f"{row['ratio']:>6.2f}" + "".join(f" {p['images_per_s']:>12,.0f}" for p in populations)
              + (f" {row['eager']['gansweep']:>15,.0f} {row['eager']['population']['images_per_s']:>12,.0f}"
                 f" {_figure(row['steady']['gansweep']):>16} {_figure(row['steady']['population']['images_per_s']):>13}"
                 if "eager" in row else ""), flush=True)
    share = study_share(device, epochs)
    report["study"] = share
    print(f"lr-sensitivity for gan ({share['trials']} trials, {epochs} epoch(s), mnist-5k): {share['wall_s']} s, of "
          f"which training steps {share['steps_s']} s; outside them {100 * share['outside_share']:.0f}%; "
          f"handing step metrics to MLflow {share['logging_s']} s")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
