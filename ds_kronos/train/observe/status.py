"""The run's status in summary.json, one home for the names every stop path ends with."""

FINISHED, STOPPED_EARLY, STOPPED_BY_REQUEST = "finished", "stopped early", "stopped (exit_after_steps)"
PREEMPTED = "preempted"
STOPPED_BY_STOP_FILE = "stopped by request (stop file)"
"""The run's status in summary.json (or "failed: ..."); a final_model/ exists after all but STOPPED_BY_REQUEST and
PREEMPTED, which saved a checkpoint and stopped (ds_kronos.train.control.preemption)."""
WITH_FINAL_MODEL = (FINISHED, STOPPED_EARLY, STOPPED_BY_STOP_FILE)
