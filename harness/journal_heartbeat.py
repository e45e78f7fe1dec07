"""A journal file storage with Optuna's heartbeat, so that a killed worker's trial does not stay RUNNING.

Optuna 5.1 implements `BaseHeartbeat` for RDB storages only. This storage adds it to
`JournalStorage`: each heartbeat is the trial's system attribute `HEARTBEAT_ATTR` (Unix
time, written to the journal), and a RUNNING trial is stale when neither that attribute
nor its start time is newer than `grace_period` seconds. `optuna.storages.fail_stale_trials`
then fails it and runs the stale-trial callback, as on an RDB storage.

NOTE: heartbeats use each worker's clock, so workers on several machines that share one
journal file need synchronised clocks (NTP). An RDB storage uses the database server's clock.
"""

import time

from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import JournalStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import TrialState

# Trial system attribute with the Unix time of the trial's last heartbeat.
HEARTBEAT_ATTR = "harness_heartbeat"


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """`JournalStorage` that records heartbeats and reports stale RUNNING trials."""

    def __init__(self, backend, heartbeat_interval: int, grace_period: int | None = None, stale_trial_callback=None):
        super().__init__(backend)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period or 2 * heartbeat_interval
        self.stale_trial_callback = stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except UpdateFinishedTrialError:
            # The trial ended before this heartbeat, so there is nothing to keep alive.
            pass

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        deadline = time.time() - self.grace_period
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            # A retried trial inherits the dead trial's system attributes, so its start time,
            # set when a worker picks it up, counts as a heartbeat too.
            last_seen = max(trial.system_attrs.get(HEARTBEAT_ATTR, 0.0), trial.datetime_start.timestamp())
            if HEARTBEAT_ATTR in trial.system_attrs and last_seen < deadline:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self):
        return self.stale_trial_callback
