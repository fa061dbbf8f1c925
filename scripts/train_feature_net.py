"""Train a shipped feature network once, and write its weights and record into gansweep/feature_nets/.

    python scripts/train_feature_net.py mnist

Anyone can rerun it: the record (`<name>.json`) holds the recipe, the data's checksum, the accuracies that
`gansweep.feature_training.measure` reports, the weights' checksum, the file's SHA-256, torch's version and the
thread count. A rerun on another machine or thread count gives a network of the same recipe, not the same bytes;
the shipped bytes are what every machine scores with.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from pathlib import Path

import torch

from gansweep.classifier import FEATURE_NET_VERSION, network_bytes, shipped_dir, weights_checksum
from gansweep.config import DataConfig
from gansweep.data import load_dataset
from gansweep.feature_training import RECIPE, measure, train_feature_net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=["mnist"])
    parser.add_argument("--out", type=Path, default=shipped_dir())
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(DataConfig(dataset=args.dataset), "cpu")
    started = time.perf_counter()
    net = train_feature_net(data, RECIPE)
    seconds = time.perf_counter() - started
    measured = measure(net, data)
    record = {"dataset": args.dataset, "data_checksum": data.record.checksum, "accuracy": measured["accuracy"],
              "version": FEATURE_NET_VERSION}
    blob = network_bytes(net, record)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.dataset}.pt").write_bytes(blob)
    summary = {**record, "measured": measured, "recipe": RECIPE.to_dict(), "checksum": weights_checksum(net),
               "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob), "seconds": round(seconds, 1),
               "torch": torch.__version__, "threads": args.threads, "machine": platform.machine(),
               "trained": time.strftime("%Y-%m-%d"), "command": f"python scripts/train_feature_net.py {args.dataset}"}
    (args.out / f"{args.dataset}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["measured"], indent=2))


if __name__ == "__main__":
    main()
