"""Evaluation of a tokenizer/predictor pair on a prepared split: rolling forecast origins, metrics, report.

Modules: ``config`` (EvalConfig), ``origins`` (origins and their normalised windows), ``metrics`` (pure numpy),
``gather`` (forecasts of all ranks to rank 0), ``report`` (JSON, plots, table), ``job`` (the orchestration).
"""
