"""What every component of a training run reads and none changes: the options, the processes, the data, the task,
the engine and where outputs go. Built once by the set-up (ds_kronos.train.build) after the engine; each component gets
it with the state it owns (never the Trainer)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ds_kronos.deepspeed_json.resolve import BatchLayout
from ds_kronos.deepspeed_json.view import DeepSpeedView
from ds_kronos.runtime import Runtime
from ds_kronos.train.config import CommonTrainConfig

if TYPE_CHECKING:
    from ds_kronos.train.engine.build import RunEngine
    from ds_kronos.train.inputs import RunData
    from ds_kronos.train.tasks import PredictorTask, TokenizerTask


@dataclass(frozen=True)
class RunContext:
    config: CommonTrainConfig
    runtime: Runtime
    data: RunData
    task: PredictorTask | TokenizerTask
    ds_view: DeepSpeedView
    built: RunEngine
    """The DeepSpeed engine and what was built with it (the engine's state is DeepSpeed's: components call it)."""
    save_dir: Path

    @property
    def engine(self) -> Any:
        return self.built.engine

    @property
    def batch(self) -> BatchLayout:
        return self.data.batch

    @property
    def ds_config(self) -> dict[str, Any]:
        """The resolved DeepSpeed config."""
        return self.data.ds_config

    @property
    def total_steps(self) -> int:
        return self.data.total_steps

    @property
    def checkpoint_dir(self) -> Path:
        return self.save_dir / "checkpoints"
