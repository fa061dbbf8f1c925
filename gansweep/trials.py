"""What every study's trials share: a trial is made ready as an MLflow child run, trained (alone or in a
population with others of the same step), and Optuna and MLflow are told how it ended (`outcomes`).
`grid.GridRunner` and `search.SearchRunner` decide which trials to ask for.

A point whose trial fails is run again, at most `retries` times in one invocation, then left failed with its
reason, so a value that cannot work costs a few runs and a line, never an endless queue. A trial whose process
died (see `liveness`) is failed as lost by whichever process finds it, and its point runs again; a process with
nothing left to hand out waits while other processes' trials run, so that it can take over a dead one's point
(`peers`: what a process does about the others).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from gansweep.attempts import asked_params, point_key
from gansweep.errors import GansweepError, failure_reason, reason
from gansweep.export import short_value
from gansweep.grouping import member_key, members_that_fit
from gansweep.hooks import Hook, MemberErrors
from gansweep.liveness import Liveness
from gansweep.outcomes import Outcomes, Recorded, resumable
from gansweep.peers import LIVE, Peers
from gansweep.spec import StudySpec
from gansweep.summary import record_counts
from gansweep.trial_hooks import CollapseStop, OptunaReport

if TYPE_CHECKING:
    from gansweep.progress import StudyProgress
    from gansweep.runs import TrackedMember
    from gansweep.variants import Variant

__all__ = ["TrialRunner", "Member", "Ask"]

# Asks Optuna for one trial, keeps it visibly alive in the stack and makes it ready; None where it stood down.
Ask = Callable[[contextlib.ExitStack], "Member | None"]


class TrialRunner:
    """Trains the trials of one study that a subclass asks Optuna for, and tells Optuna and MLflow how each ended."""

    def __init__(self, spec: StudySpec, study: Any, client: Any, experiment: str, parent_id: str, data: Any,
                 evaluator: Any, progress: bool, retries: int, liveness: Liveness, population: int = 1):
        self.spec, self.study, self.client, self.liveness = spec, study, client, liveness
        self.population = population  # grid points of one step trained together, at most
        self.experiment, self.parent_id, self.data, self.progress = experiment, parent_id, data, progress
        self.evaluator, self.retries = evaluator, retries
        self.outcomes = Outcomes(spec, study, client, self._counted)
        self.peers = Peers(study, client, experiment, parent_id, liveness, progress)
        self.shown: StudyProgress | None = None

    @contextlib.contextmanager
    def showing(self, total: int) -> Iterator[None]:
        """The study's progress (trials ended of `total`, best so far, ETA) while trials are handed out."""
        from gansweep.progress import StudyProgress

        if self.progress:
            ended, best = record_counts(self.client, self.parent_id, self.study, self.spec)
            self.shown = StudyProgress(self.spec.name, total, ended, f"{self.spec.objective.metric}_val")
        try:
            yield
        finally:
            if self.shown is not None:
                self.shown.close()
                self.shown = None

    def _counted(self) -> None:
        """A trial has ended: the parent's counts, and the progress shown."""
        ended, best = record_counts(self.client, self.parent_id, self.study, self.spec)
        if self.shown is not None:
            self.shown.trial_ended(ended, best)

    def _step_key(self, params: dict[str, Any]) -> tuple:
        """Points with equal keys can share one step (see grouping.member_key)."""
        from gansweep.variants import get_variant

        return params["variant"], member_key(get_variant(params["variant"]).config(**self.spec.changes(params)))

    def _fit(self, params: dict[str, Any], size: int) -> int:
        """At most `size` members like `params` (a sampled trial's: its variant at the study's settings), and on
        CUDA no more than fit in memory."""
        from gansweep.variants import get_variant

        device = self.data.train_images.device
        if device.type != "cuda" or size == 1:
            return size
        variant = get_variant(params["variant"])
        return min(size, members_that_fit(variant, variant.config(**self.spec.changes(params)),
                                          self.data.record.image_shape, self.data.record.n_classes, device))

    def _run_population(self, asks: list[Ask]) -> int:
        """Ask for each trial and train those not taken meanwhile together, grouped by the step they share (a
        trial asked for one point can be handed another: a worker's enqueued point, or one a dead process left
        waiting; a sampled one has its own structural settings) and by the epoch they resume from (a population
        steps in lockstep). A trial made ready but never trained, because an earlier group was interrupted or
        failed, is ended too, so that nothing stays RUNNING. Returns how many trials trained."""
        members: list[Member] = []
        handed: set[int] = set()
        returned = 0
        with contextlib.ExitStack() as alive:
            try:
                for ask in asks:
                    if (member := ask(alive)) is not None:
                        members.append(member)
                groups: dict[tuple, list[Member]] = {}
                for member in members:
                    epoch = 0 if member.tracked.resume is None else member.tracked.resume["epoch"]
                    groups.setdefault((self._step_key(member.params), epoch), []).append(member)
                for group in groups.values():
                    handed.update(m.trial.number for m in group)
                    returned += self._train_together(group)
            except BaseException as e:
                for member in members:
                    if member.trial.number not in handed:
                        resumable(member.trial)
                        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
                        self.outcomes.end(member.trial, member.tracked.run_id, status, f"not trained: {reason(e)}")
                raise
        return len(members) - returned

    def _given_up(self, key: tuple) -> bool:
        return self.outcomes.attempts[key] > self.retries

    def failures(self) -> tuple[str, ...]:
        """One line per grid point that failed in this invocation and has no finished or running trial now, and
        per search variant or re-run given up after its retries."""
        live = {("point", point_key(asked_params(t))) for t in self.study.get_trials(deepcopy=False, states=LIVE)}
        return tuple(line for key, line in self.outcomes.failed.items()
                     if (key not in live if key[0] == "point" else self._given_up(key)))

    def _train(self, trial: Any, params: dict[str, Any], key: tuple) -> None:
        """Train the trial (from its point's last checkpoint, when an earlier attempt left one) and tell Optuna
        and MLflow how it ended; the caller keeps the trial visibly alive to other processes meanwhile."""
        self._train_together([self._prepare(trial, params, key)])

    def _prepare(self, trial: Any, params: dict[str, Any], key: tuple) -> Member:
        """The trial's MLflow run (new, or its point's earlier one to resume), config and hooks."""
        from gansweep.resume import resumable_attempt
        from gansweep.runs import TrackedMember
        from gansweep.tracking import run_tags
        from gansweep.variants import get_variant

        spec = self.spec
        variant = get_variant(params["variant"])
        # what differs first, short enough for MLflow's run name column: gan lr=3e-4 s0 #017
        swept = [f"{k}={short_value(v)}" for k, v in params.items() if k not in ("variant", "seed")]
        name = " ".join([variant.name, *swept, f"s{params['seed']}", f"#{trial.number:03d}"])
        config = variant.config(**spec.changes(params))  # checked with the study file: cannot fail here
        environment = {k: str(v) for k, v in {**self.evaluator.params(),
                                              "device": str(self.data.train_images.device)}.items()}
        resume = resumable_attempt(self.study, self.client, trial, params, config, variant.name, environment)
        tags = {"mlflow.parentRunId": self.parent_id, "gansweep.study": spec.name, "gansweep.role": "trial",
                "gansweep.optuna_study": self.study.study_name, "gansweep.trial": str(trial.number),
                "gansweep.variant": variant.name, "gansweep.dataset": spec.dataset,
                "gansweep.seed": str(params["seed"])}
        if resume is None:
            run_id = self.client.create_run(self.experiment, run_name=name, tags=run_tags(tags)).info.run_id
        else:  # the same MLflow run goes on, now under this trial
            run_id = resume.run_id  # tagged with this trial before it runs again, so nobody ends it as lost
            self.client.set_tag(run_id, "gansweep.trial", str(trial.number))
            self.client.set_tag(run_id, "gansweep.resumed", f"trial {resume.trial} at epoch {resume.saved['epoch']}")
            self.client.update_run(run_id, status="RUNNING", name=name)  # its number, as in every table
            trial.set_user_attr("resumed_at_epoch", resume.saved["epoch"])
        trial.set_user_attr("mlflow_run_id", run_id)
        label = name
        if resume is not None:
            label += f" (resumed at epoch {resume.saved['epoch']})"
        extra = {"study": spec.name, "budget_unit": spec.budget_unit,
                 "objective": spec.objective.key,  # variant and seed are params of every run already
                 **{f"swept.{k}": v for k, v in params.items() if k not in ("variant", "seed")}}
        hooks: list[Hook] = [OptunaReport(trial, spec.objective.key, spec.pruner)]
        if spec.collapse_window:
            hooks.append(CollapseStop(spec.collapse_window))
        recorded = Recorded(self.outcomes, trial)
        tracked = TrackedMember(run_id, config, extra, [*hooks, recorded], label if self.progress else None,
                                None if resume is None else resume.saved)
        return Member(trial, params, key, f"trial {trial.number} ({name})", variant, tracked, recorded)

    def _train_together(self, members: list[Member]) -> int:
        """Train the members as one population (one step for all; each its own run). Each is recorded the moment
        it ends (`outcomes.Recorded`); a member whose hook raised is recorded with its own error, and an error of
        the population's step is that of every member not ended by then. Members out of device memory are handed
        back, resumable and not counted as a failed try, and the population size is halved for the rest of the
        study: the estimate (`members_that_fit`) was too generous. Returns how many members it handed back."""
        from gansweep.runs import tracked_population

        def still_open() -> list[Member]:
            return [m for m in members if not m.recorded.done]

        for m in members:  # its wall time is shared with the others: how many is part of reading it
            m.trial.set_user_attr("population", len(members))
            self.client.set_tag(m.tracked.run_id, "gansweep.population", str(len(members)))
        try:
            tracked_population(self.client, members[0].variant, self.data, self.evaluator,
                               self.spec.objective.metric, [m.tracked for m in members])
        except KeyboardInterrupt as e:
            for m in still_open():
                self.outcomes.end(m.trial, m.tracked.run_id, "interrupted", reason(e))
            raise
        except BaseException as e:
            own = e.errors if isinstance(e, MemberErrors) else {}  # members whose hooks raised: their own
            errors = [(m, own.get(k, e)) for k, m in enumerate(members) if not m.recorded.done]

            def out_of_memory(error: BaseException) -> bool:
                return len(members) > 1 and isinstance(error, torch.OutOfMemoryError)

            handed = [m for m, error in errors if out_of_memory(error)]
            if handed:
                self._hand_back(handed, len(members))
            self._fail_each([(m, error) for m, error in errors if not out_of_memory(error)])
            return len(handed)
        return 0

    def _fail_each(self, errors: list[tuple[Member, BaseException]]) -> None:
        """Record each member with its own error. gansweep's own errors (a store that refuses a run's artifact)
        fail their trials; anything else (a bug, or the machine: memory, disk) fails its trial resumable, the next
        attempt continuing from the last checkpoint, and the first such error is raised once all are recorded."""
        raised = None
        for m, error in errors:
            if not isinstance(error, GansweepError):
                resumable(m.trial)
                if raised is None:
                    raised = error
            self.outcomes.fail(m.trial, m.tracked.run_id, m.key, m.what, failure_reason(error))
        if raised is not None:
            raise raised

    def _hand_back(self, members: list[Member], size: int) -> None:
        """Members out of device memory in a population of `size` are ended to run again, resumable, in
        populations of at most half the size."""
        self.population = max(1, size // 2)
        for m in members:
            resumable(m.trial)
            self.outcomes.end(m.trial, m.tracked.run_id, "failed", f"out of memory in a population of {size}; "
                              f"run again in populations of at most {self.population}", retell=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self.progress:
            print(f"out of memory training {size} trials together: {len(members)} handed back, to train "
                  f"in populations of at most {self.population}", file=sys.stderr)


@dataclass(frozen=True)
class Member:
    """A trial made ready to train: alone, or in a population with others of the same step."""

    trial: Any
    params: dict[str, Any]
    key: tuple
    what: str  # how failures name it
    variant: Variant
    tracked: TrackedMember
    recorded: Recorded

