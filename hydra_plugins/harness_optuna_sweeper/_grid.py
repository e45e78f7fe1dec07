"""Grid sweeps: each grid point runs once over resumes and workers, and a failed point gets one retry.

Optuna's GridSampler finds its place in the grid through a shuffle seeded by the sampler
seed and the grid ids stored on trials. A resumed or second worker with another seed, or a
failed trial, then makes it repeat some points and skip others. So the sweeper enqueues
each grid point as a trial with fixed params (`Study.enqueue_trial`) and picks a point
that no COMPLETE, PRUNED, RUNNING or WAITING trial has taken. A point whose trials all
failed is picked again, up to GRID_RETRIES times, once no untaken point is left.

NOTE: two workers that pick at the same moment can pick the same point (each picks at
random among the free points, as GridSampler does). The budget stays exact, and the grid
then ends with one point untried.
"""

import itertools
import random
from collections import Counter

from ._budget import BUDGET_STATES, is_job_failure

GRID_RETRIES = 1
# Trial system attribute where Optuna keeps the params of an enqueued trial.
FIXED_PARAMS_ATTR = "fixed_params"


def grid_points(grid: dict[str, list]) -> list[dict]:
    """Return every combination of the grid's values, as params dicts."""
    names = sorted(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[name] for name in names))]


def next_grid_point(study, points: list[dict], rng: random.Random) -> dict | None:
    """Return a grid point that no trial has taken, preferring points that failed least; None when none is left."""
    claimed = set()
    failures = Counter()
    for trial in study.get_trials(deepcopy=False):
        # An enqueued trial has no params until a worker takes it from the queue.
        key = _key(trial.params or trial.system_attrs.get(FIXED_PARAMS_ATTR, {}))
        if trial.state in BUDGET_STATES:
            claimed.add(key)
        elif is_job_failure(trial):
            failures[key] += 1

    free = [point for point in points if _key(point) not in claimed and failures[_key(point)] <= GRID_RETRIES]
    if not free:
        return None
    fewest = min(failures[_key(point)] for point in free)
    return rng.choice([point for point in free if failures[_key(point)] == fewest])


def _key(params: dict) -> tuple:
    return tuple(sorted(params.items()))
