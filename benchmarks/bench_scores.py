"""Time one evaluation (every score on N generated against N real images) beside its parts' baseline: featurising
the 2N images alone. Run with `make bench`; prints a table, asserts nothing.

The real side is mnist-5k's training split (N is at most 4,000 here); the "generated" side is noise, so the
numbers measure the scoring, not a generator.
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
    sizes = (1000, 2000, 4000) if device.type == "cpu" else (1000, 4000)
    print(f"device {device}, torch threads {torch.get_num_threads()}")
    print(f"{'N':>6}  {'featurise 2N (s)':>17}  {'all scores (s)':>15}")
    for n in sizes:
        # real = test and train images stacked, so N may exceed the 1,000 held-out images
        pool = torch.cat([data.test_images, data.train_images])
        real = Dataset(pool[:n], data.test_labels.new_zeros(n), pool[:n], data.test_labels.new_zeros(n), data.record)
        evaluator = Evaluator(classifier, real, n)
        fake = torch.rand(n, *data.record.image_shape, device=device) * 2 - 1
        featurise = timed(lambda: (classifier.embed(fake), classifier.embed(real.test_images)))
        score = timed(lambda: evaluator.score(fake))
        print(f"{n:>6}  {featurise:>17.3f}  {score:>15.3f}")


if __name__ == "__main__":
    main()
