"""Hyper-parameter sweeps of launch/train.py on Optuna (launch/sweep.py): the search space, the study's storage, one
trial's launch, the workers sharing a study, and the report."""
