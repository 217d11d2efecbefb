"""Evaluation of a tokenizer/predictor pair on a prepared split: rolling forecast origins, metrics, report.

Modules: ``config`` (EvalConfig), ``origins`` (origins and their normalised windows), ``metrics`` (point metrics,
pure numpy), ``probabilistic`` (scores of sampled paths: CRPS, WQL, MASE, PIT, Brier, volatility), ``baselines``
(random-walk and bootstrap paths), ``significance`` (Newey-West test of the IC), ``scoring`` (all of them on the
gathered forecasts), ``gather`` (forecasts of all ranks to rank 0), ``report`` (JSON, plots, tables), ``job``
(the orchestration), ``calibrate`` (the sampler's temperature/top-p search, ``launch/calibrate.py``).
"""
