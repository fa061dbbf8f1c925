"""Time one evaluation (every score on N generated against one slice of N real images, then the same with the
standard errors, as each slice costs per epoch) beside its parts' baseline: featurising the 2N images alone.
Run with `make bench`; prints a table, asserts nothing.

The real side is mnist-5k's images (N is at most 2,500 here, the held-out split being 2N); the "generated" side
is noise, so the numbers measure the scoring, not a generator.
"""

from __future__ import annotations

import time

import torch

from gansweep.classifier import get_classifier
from gansweep.config import DataConfig
from gansweep.data import Dataset, load_dataset
from gansweep.evaluation import Evaluator
from gansweep.trainer import resolve_device


def timed(fn, repeats: int = 3) -> float:
    fn()  # warm-up: caches, lazy CUDA init
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    device = resolve_device("auto")
    data = load_dataset(DataConfig(dataset="mnist-5k"), device)
    classifier = get_classifier(data)
    sizes = (500, 1000, 2000) if device.type == "cpu" else (1000, 2500)
    print(f"device {device}, torch threads {torch.get_num_threads()}")
    print(f"{'N':>6}  {'featurise 2N (s)':>17}  {'all scores (s)':>15}  {'with s.e. (s)':>14}")
    pool = torch.cat([data.test_images, data.train_images])  # test and train stacked: a held-out split of 2N
    labels = data.test_labels.new_zeros(len(pool))
    for n in sizes:
        real = Dataset(pool[:n], labels[:n], pool[:2 * n], labels[:2 * n], data.record)
        evaluator = Evaluator(classifier, real, n)
        fake = torch.rand(n, *data.record.image_shape, device=device) * 2 - 1
        featurise = timed(lambda: (classifier.embed(fake), classifier.embed(real.test_images[:n])))
        score = timed(lambda: evaluator.score(fake))
        measure = timed(lambda: evaluator.measure(fake))
        print(f"{n:>6}  {featurise:>17.3f}  {score:>15.3f}  {measure:>14.3f}")


if __name__ == "__main__":
    main()
