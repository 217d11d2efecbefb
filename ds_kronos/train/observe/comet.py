"""comet_ml (online or offline) with upstream's metric names."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ds_kronos.errors import ConfigError


class CometLogger:
    """comet_ml experiment with upstream's metric names. Offline mode writes a zip archive under ``directory``."""

    def __init__(self, mode: str, project: str, name: str | None, directory: Path, parameters: dict[str, Any]):
        # Auto-logging hooks into torch and argparse; the trainer logs what it means to log.
        os.environ.setdefault("COMET_DISABLE_AUTO_LOGGING", "1")
        import comet_ml

        quiet = dict(log_code=False, log_graph=False, auto_param_logging=False, auto_metric_logging=False,
                     auto_output_logging=False, log_env_details=False, log_git_metadata=False, log_git_patch=False,
                     log_env_gpu=False, log_env_host=False, log_env_cpu=False, display_summary_level=0)
        if mode == "online":
            api_key = os.environ.get("COMET_API_KEY")
            if not api_key:
                raise ConfigError("--comet online needs COMET_API_KEY in the environment (or use --comet offline)")
            self.experiment = comet_ml.Experiment(api_key=api_key, project_name=project, **quiet)
        else:
            directory.mkdir(parents=True, exist_ok=True)
            self.experiment = comet_ml.OfflineExperiment(project_name=project, offline_directory=str(directory),
                                                         **quiet)
        if name:
            self.experiment.set_name(name)
        self.experiment.log_parameters(parameters)

    def log(self, name: str, value: float, step: int | None = None, epoch: int | None = None) -> None:
        self.experiment.log_metric(name, value, step=step, epoch=epoch)

    def end(self) -> None:
        self.experiment.end()
