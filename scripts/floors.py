"""Each score's real-data floor with its spread, as the README's Scores table reports them: the mean and standard
deviation over the evaluator's draws of training images, scored against the test slice.

    python scripts/floors.py mnist-5k mnist
"""

from __future__ import annotations

import argparse

from gansweep.classifier import get_classifier
from gansweep.config import DataConfig
from gansweep.data import load_dataset
from gansweep.evaluation import Evaluator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+")
    args = parser.parse_args()
    for name in args.datasets:
        data = load_dataset(DataConfig(dataset=name), "cpu")
        evaluator = Evaluator(get_classifier(data), data)
        print(f"{name}: N = {evaluator.n}, network {evaluator.classifier.checksum}")
        for score, value in evaluator.floor.items():
            print(f"  {score}: {value:.4g} +/- {evaluator.floor_sd[score]:.2g}")


if __name__ == "__main__":
    main()
