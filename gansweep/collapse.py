"""What a generator's samples are, judged from one epoch's scores: digits, a mode collapse, or noise.

Mode collapse is few modes drawn well: most samples are confidently one digit or another, but those digits fill
few classes (coverage below half). Noise is what a diverged or untrained generator draws: most samples are "not a
digit" to the feature network. Blur is neither: all classes, low precision, and many samples between classes, so
it is no collapse however poor. The judgement needs no earlier peak: a generator that draws only 1s from its
first epoch has collapsed at its first epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["COLLAPSE_COVERAGE", "CONFIDENT_SHARE", "NOISE_REJECTED", "Verdict", "judge"]

COLLAPSE_COVERAGE = 0.5  # fewer than half the classes get half a fair share of the confident digits
CONFIDENT_SHARE = 0.5  # ... and at least half the samples are confidently one digit (else it is blur or junk)
NOISE_REJECTED = 0.5  # at least half the samples are "not a digit": noise


@dataclass(frozen=True)
class Verdict:
    kind: str  # "mode_collapse" or "noise"
    numbers: str  # the scores that decided it, as a person reads them

    def note(self, epoch: int) -> str:
        return f"epoch {epoch}: {self.numbers}"


def judge(scores: dict[str, float], n_classes: int) -> Verdict | None:
    """The verdict on one evaluation's scores (names without the `score/` prefix), or None for digits."""
    rejected, confident, coverage = scores["rejected"], scores["confident"], scores["coverage"]
    if rejected >= NOISE_REJECTED:
        return Verdict("noise", f"{rejected:.0%} of samples are not digits (precision {scores['precision']:.2f})")
    if confident >= CONFIDENT_SHARE and coverage < COLLAPSE_COVERAGE:
        classes = round(coverage * n_classes)
        return Verdict("mode_collapse", f"{classes} of {n_classes} classes among the {confident:.0%} confident "
                                        f"samples (class KL {scores['class_kl']:.2f}, precision "
                                        f"{scores['precision']:.2f}, recall {scores['recall']:.2f})")
    return None
