"""What is trained: the predictor over a frozen tokenizer, or the tokenizer itself.

The trainer (engine, data, schedule, validation reduction, checkpoints, logging) is shared; a task supplies the
model to put in the engine, the training loss with its logged components, and per-sample validation sums.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ds_kronos.model import Kronos, KronosTokenizer
from ds_kronos.model.objective import per_sample_uniforms, predict_and_score, tokenize_batch
from ds_kronos.model.pairing import check_pair
from ds_kronos.model.partitioned import SafetensorsTensors, build_partitioned
from ds_kronos.model.published import names_model_folder
from ds_kronos.train.engine.finetune import FinetuneSpec, Finetuning

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_tokenizer_dtype(choice: str, device: torch.device) -> torch.dtype:
    if choice == "auto":
        # fp16 on GPU by design (upstream encodes in fp32: its `half=True` means "return s1 and s2 apart"); it
        # changes a small share of ids (README, frozen tokenizer precision). On CPU fp16 is slow and bf16 flips more
        # ids, so fp32.
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[choice]


@dataclass(frozen=True)
class MetricNames:
    """Component labels for progress lines and the comet metric names (upstream's) of each component."""

    labels: tuple[str, ...]
    train_comet: tuple[str, ...]
    lr_comet: str
    val_comet: str
    val_components_comet: tuple[str, ...]


class PredictorTask:
    """Next-token prediction with the dual head; tokens come from a frozen tokenizer outside the engine."""

    kind = "predictor"
    names = MetricNames(labels=("loss", "s1", "s2"),
                        train_comet=("train_predictor_loss_batch", "train_S1_loss_each_batch",
                                     "train_S2_loss_each_batch"),
                        lr_comet="predictor_learning_rate", val_comet="val_predictor_loss_epoch",
                        val_components_comet=("val_S1_loss", "val_S2_loss"))

    def __init__(self, *, tokenizer: str, predictor: str, teacher_forcing: bool, tokenizer_dtype: str,
                 device: torch.device, activation_checkpointing: bool, partition_config: dict | None = None,
                 rank: int = 0, finetune: FinetuneSpec | None = None):
        self.tokenizer_dtype = resolve_tokenizer_dtype(tokenizer_dtype, device)
        self.device = device
        frozen = KronosTokenizer.from_folder_or_preset(tokenizer)  # outside zero.Init: never partitioned
        self.tokenizer = frozen.eval().requires_grad_(False).to(device, self.tokenizer_dtype)
        self.partitioned = partition_config is not None
        weights: SafetensorsTensors | None = None
        if self.partitioned:
            # ZeRO-3: each rank materialises only its shard, and a checkpoint streams in one module at a time.
            predictor_model, weights = build_partitioned(Kronos, predictor, partition_config, rank)
        else:
            predictor_model = Kronos.from_folder_or_preset(predictor)
        self.random_init = not names_model_folder(predictor)
        check_pair(self.tokenizer, predictor_model)
        predictor_model.gradient_checkpointing = activation_checkpointing
        finetune = finetune or FinetuneSpec()
        self.finetuning = Finetuning(finetune, predictor_model)
        self.model: nn.Module = self.finetuning.model
        """What the engine trains: the predictor, or peft's model around it (--finetune lora)."""
        self.checkpoint_weights: Mapping[str, torch.Tensor] | None = self.finetuning.exact_values(weights)
        """With partitioned construction: the checkpoint file, read one tensor at a time (for the fp32 masters),
        under the engine module's names."""
        self.teacher_forcing = teacher_forcing
        self.description = (f"predictor {predictor}, tokenizer {tokenizer} "
                            f"({str(self.tokenizer_dtype).removeprefix('torch.')}, frozen); trains "
                            f"{finetune.describe()}")

    def publish(self, folder: Path, state: Mapping[str, torch.Tensor],
                extra: Callable[[Path], None] | None = None) -> None:
        """Write an export (the engine module's full fp32 state) as a published folder
        (ds_kronos.train.engine.finetune);
        ``extra(staging)`` adds files to it before it is swapped into place."""
        self.finetuning.publish(folder, state, extra)

    def train_losses(self, engine, x: torch.Tensor, stamp: torch.Tensor) -> torch.Tensor:
        """[loss (with grad), s1 loss, s2 loss]."""
        batch = tokenize_batch(self.tokenizer, x, stamp, self.device, self.tokenizer_dtype)
        return torch.stack(predict_and_score(engine, engine.module.head, batch, self.teacher_forcing))

    def validation_losses(self, engine, x: torch.Tensor, stamp: torch.Tensor, sample_keys: Sequence[int]
                          ) -> tuple[torch.Tensor, ...]:
        """Per-sample [loss, s1, s2], each [B]. Without teacher forcing each sample's s1 conditioning is drawn from
        its own stream, ``sample_keys`` (one per sample)."""
        batch = tokenize_batch(self.tokenizer, x, stamp, self.device, self.tokenizer_dtype)
        uniform = (None if self.teacher_forcing
                   else per_sample_uniforms(sample_keys, batch.s1_in.shape[1]).to(self.device, non_blocking=True))
        per_sample = predict_and_score(engine, engine.module.head, batch, self.teacher_forcing, causal_s2=True,
                                       reduction="none", s1_uniform=uniform)
        return tuple(per_sample)


class TokenizerTask:
    """Upstream's tokenizer objective: (MSE(s1-only recon) + MSE(full recon) + quantizer loss) / 2.

    The quantizer loss contains entropy terms with a negative sign, so the total can go below zero; that is
    expected. Watch the reconstruction components: they are what the predictor's tokens can express. Validation
    (and the best model) is by the full reconstruction MSE, as upstream.
    """

    kind = "tokenizer"
    partitioned = False  # the tokenizer is small: built whole under every ZeRO stage
    checkpoint_weights = None
    names = MetricNames(labels=("loss", "recon_pre", "recon_all", "bsq"),
                        train_comet=("train_tokenizer_loss_batch", "train_recon_loss_pre_each_batch",
                                     "train_recon_loss_each_batch", "train_vqvae_vq_loss_each_batch"),
                        lr_comet="tokenizer_learning_rate", val_comet="val_tokenizer_loss_epoch",
                        val_components_comet=("val_recon_loss_pre", "val_bsq_loss"))

    def __init__(self, *, tokenizer: str, device: torch.device):
        self.device = device
        self.model: nn.Module = KronosTokenizer.from_folder_or_preset(tokenizer)
        self.random_init = not names_model_folder(tokenizer)
        self.description = f"tokenizer {tokenizer}"

    def publish(self, folder: Path, state: Mapping[str, torch.Tensor],
                extra: Callable[[Path], None] | None = None) -> None:
        self.model.save_pretrained(folder, state_dict=state, extra=extra)

    def _forward(self, engine, x: torch.Tensor):
        x = x.to(self.device, non_blocking=True)
        (recon_pre, recon_all), bsq_loss, _, _ = engine(x)
        return x, recon_pre.float(), recon_all.float(), bsq_loss.float()

    def train_losses(self, engine, x: torch.Tensor, stamp: torch.Tensor) -> torch.Tensor:
        """[loss (with grad), recon_pre, recon_all, bsq]."""
        x, recon_pre, recon_all, bsq_loss = self._forward(engine, x)
        loss_pre, loss_all = F.mse_loss(recon_pre, x), F.mse_loss(recon_all, x)
        return torch.stack([(loss_pre + loss_all + bsq_loss) / 2, loss_pre, loss_all, bsq_loss])

    def validation_losses(self, engine, x: torch.Tensor, stamp: torch.Tensor, sample_keys: Sequence[int]
                          ) -> tuple[torch.Tensor, ...]:
        """Per-sample [full MSE (the validation loss), s1-only MSE, bsq], each [B]. The quantizer loss is a batch
        statistic; each sample carries the batch mean."""
        x, recon_pre, recon_all, bsq_loss = self._forward(engine, x)
        per_all = (recon_all - x).pow(2).flatten(1).mean(dim=1)
        per_pre = (recon_pre - x).pow(2).flatten(1).mean(dim=1)
        return per_all, per_pre, bsq_loss.expand_as(per_all)
