"""The README's findings: per value of a study's swept parameter, n, the mean and standard deviation over seeds of
the final test-slice scores, the collapse and noise tags, and an exact permutation test of each value against a
reference value.

    python scripts/findings.py --store STORE lr-sensitivity lr --reference 2e-4
    python scripts/findings.py --store STORE dropout dropout --reference 0.0
    python scripts/findings.py --store STORE variant-shootout variant --reference gan

The permutation test takes every way of splitting the pooled seeds of two values into two groups of the same sizes
and counts how often the difference of means is at least as large as the one observed (two-sided). It assumes
nothing about the scores' distribution; with n seeds a side its smallest p-value is 2 / C(2n, n).
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics

from gansweep.export import comparison_table, find_runs
from gansweep.store import resolve_store
from gansweep.tracking import client_for

SCORES = ("fid_proxy", "coverage", "precision", "recall", "rejected", "d_overfit")


def permutation_p(a: list[float], b: list[float]) -> float:
    pooled, observed = a + b, abs(statistics.fmean(a) - statistics.fmean(b))
    splits = list(itertools.combinations(range(len(pooled)), len(a)))
    extreme = 0
    for chosen in splits:
        left = [pooled[i] for i in chosen]
        right = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        extreme += abs(statistics.fmean(left) - statistics.fmean(right)) >= observed - 1e-12
    return extreme / len(splits)


def _value(text: str) -> float | str:
    """A swept value as the table holds it: a number, or a name such as a variant."""
    try:
        return float(text)
    except ValueError:
        return text


def _shown(value: float | str) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study")
    parser.add_argument("parameter")
    parser.add_argument("--store", default=None)
    parser.add_argument("--reference", required=True,
                        help="the value every other is tested against, chosen before looking at the results")
    args = parser.parse_args()
    client = client_for(resolve_store(args.store).existing().tracking_uri, create=False)
    runs, _ = find_runs(client, study=args.study)
    table = comparison_table(client, runs, [s for s in SCORES if s != "d_overfit"] + ["d_overfit"])
    groups = {value: rows for value, rows in table.groupby(args.parameter)}
    reference = _value(args.reference)
    print(f"{args.study}: {len(table)} trials; p: exact permutation test of mean test fid_proxy against "
          f"{args.parameter}={_shown(reference)}")
    header = [args.parameter, "n", *(f"{s} mean ± sd" for s in SCORES), "collapsed", "noise", "p (fid)"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for value, rows in groups.items():
        cells = [_shown(value), str(rows["fid_proxy"].notna().sum())]
        for score in SCORES:
            values = rows[score].dropna()
            sd = values.std(ddof=1) if len(values) > 1 else math.nan
            sd = 0.0 if sd < 1e-9 * abs(values.mean()) else sd  # equal values, up to float rounding
            cells.append(f"{values.mean():.3g} ± {sd:.2g}")
        cells.append(str((rows["mode_collapse"] != "").sum()))
        cells.append(str((rows["noise"] != "").sum()))
        if value == reference:
            cells.append("")
        else:
            p = permutation_p(list(rows["fid_proxy"].dropna()), list(groups[reference]["fid_proxy"].dropna()))
            cells.append(f"{p:.3f}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
