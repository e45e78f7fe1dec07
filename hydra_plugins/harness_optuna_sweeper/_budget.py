"""The global trial budget of a study, shared by every worker and every resume of a sweep.

`n_trials` bounds the trials in BUDGET_STATES. A FAIL trial does not use up the budget: the
sweep runs another in its place, and `max_failures` stops a worker that keeps failing. A
WAITING trial (the retry of a dead worker's trial) holds a slot, and a worker asks for it
before any new trial, so `open_slots` leaves WAITING trials out.

Workers that share a storage check the budget twice. Before asking, a worker counts the
budget trials to decide whether to ask at all. After asking, two workers that both saw one
free slot each hold a new trial, so each worker keeps its trial only if fewer than `n_trials`
budget trials have a lower number (`within_budget`) and fails it otherwise. Every storage
numbers trials in creation order (RDB storages lock the study row, the journal is one
append-only log), so each earlier trial is visible to that check, and FAIL is final. Hence
the kept trials never exceed `n_trials`: the last kept trial would have counted all others.
"""

from optuna.trial import TrialState

BUDGET_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
# Trial user attribute with the reason a trial failed.
FAIL_REASON_ATTR = "fail_reason"
# User attribute of a trial failed because other workers had used up the budget.
OVER_BUDGET_REASON = "over budget: other workers asked for the last trials first"
# User attribute of a grid trial asked after another worker had taken the queued grid point.
GRID_RACE_REASON = "no grid point: another worker took the queued one first"
# FAIL trials with these reasons ran no job, so they count as no failure.
NO_JOB_REASONS = (OVER_BUDGET_REASON, GRID_RACE_REASON)


def is_job_failure(trial) -> bool:
    """Return whether `trial` is a FAIL trial whose job ran (or was launched) and failed."""
    return trial.state == TrialState.FAIL and trial.user_attrs.get(FAIL_REASON_ATTR) not in NO_JOB_REASONS


def open_slots(study, n_trials: int) -> int:
    """Return how many trials this worker may still ask for: WAITING ones first, then new ones."""
    started = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    return n_trials - len(started)


def within_budget(study, trial_number: int, n_trials: int) -> bool:
    """Return whether fewer than `n_trials` budget trials have a lower number than `trial_number`."""
    earlier = [trial for trial in study.get_trials(deepcopy=False, states=BUDGET_STATES) if trial.number < trial_number]
    return len(earlier) < n_trials
