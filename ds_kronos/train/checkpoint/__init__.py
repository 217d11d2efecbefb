"""Saving, restoring and publishing a training run's state; entry point: checkpointer.Checkpointer."""
