"""Each score's real-data floor with its spread: held-out real images scored against several disjoint draws of
training images, as the README's Scores table reports them.

    python scripts/floors.py mnist-5k mnist
"""

from __future__ import annotations

import argparse
import statistics

from gansweep.classifier import get_classifier
from gansweep.config import DataConfig
from gansweep.data import load_dataset
from gansweep.evaluation import Evaluator

NAMES = ("fid_proxy", "kid_proxy", "is_proxy", "coverage", "class_kl", "confident", "rejected", "precision",
         "recall", "cond_accuracy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+")
    parser.add_argument("--draws", type=int, default=4)
    args = parser.parse_args()
    for name in args.datasets:
        data = load_dataset(DataConfig(dataset=name), "cpu")
        evaluator = Evaluator(get_classifier(data), data)
        n = evaluator.n
        draws = [evaluator.score(data.train_images[k * n:(k + 1) * n], data.train_labels[k * n:(k + 1) * n])
                 for k in range(min(args.draws, len(data.train_images) // n))]
        print(f"{name}: N = {n}, {len(draws)} draws, network {evaluator.classifier.checksum}")
        for score in NAMES:
            values = [d[score] for d in draws]
            print(f"  {score}: {statistics.mean(values):.4g} +/- {statistics.stdev(values):.2g}")


if __name__ == "__main__":
    main()
