"""The scores gansweep reports, by name: which way is better, and what each measures; and the evaluation size's
rule. Nothing here needs torch, so listing scores, checking a study file and exporting tables stay quick."""

from __future__ import annotations

from dataclasses import dataclass

from gansweep.errors import ConfigError

__all__ = ["Score", "SCORES", "N_EVAL", "MAX_EVAL", "MIN_EVAL", "check_eval_size"]


@dataclass(frozen=True)
class Score:
    name: str
    direction: str  # minimize or maximize: what "better" means, for objectives and for "best so far"
    summary: str
    conditional_only: bool = False


SCORES: dict[str, Score] = {s.name: s for s in (
    Score("fid_proxy", "minimize", "Frechet distance between Gaussian fits of classifier features"),
    Score("kid_proxy", "minimize", "unbiased MMD^2, cubic kernel on classifier features, mean over subsets"),
    Score("kid_proxy_std", "minimize", "spread of kid_proxy over its subsets"),
    Score("is_proxy", "maximize", "exp E KL(p(y|x) || p(y)) under the classifier, 1 to n_classes"),
    Score("coverage", "maximize", "share of classes that get at least half a fair share of the confident samples"),
    Score("class_kl", "minimize", "KL(class histogram of the confident samples || uniform)"),
    Score("confident", "maximize", "share of samples the classifier calls one digit with probability >= 0.5"),
    Score("rejected", "minimize", "share of samples the classifier calls not a digit"),
    Score("precision", "maximize", "share of samples inside the real k-NN manifold (k=3)"),
    Score("recall", "maximize", "share of real images inside the samples' k-NN manifold (k=3)"),
    Score("cond_accuracy", "maximize", "how often the classifier names the requested label", True),
    Score("d_overfit", "minimize", "D's mean output on training images minus on held-out real ones"),
)}

N_EVAL = 5000  # images per slice on every device (bounded by the splits), so all workers score on one scale
MAX_EVAL = 100_000  # the most images an evaluation may be asked for; every split here is smaller anyway
MIN_EVAL = 4  # KID needs subsets of at least 2, precision and recall a 3rd neighbour besides the point itself


def check_eval_size(requested: int | None, name: str) -> None:
    """The one rule for a requested evaluation size (None: N_EVAL), checked before data load."""
    if requested is not None and not MIN_EVAL <= requested <= MAX_EVAL:
        raise ConfigError(f"{name} must be in [{MIN_EVAL}, {MAX_EVAL}], got {requested!r}")
