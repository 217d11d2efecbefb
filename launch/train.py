"""Fine-tune a Kronos predictor with DeepSpeed (the main job).

    deepspeed --num_gpus N launch/train.py --deepspeed_config ds_configs/zero2.json --data PREPARED [options]
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 launch/train.py ...        # CPU-only machine, 2 processes

Options: `python launch/train.py --help`, or a YAML/JSON file of them with --config.
"""

from ds_kronos.cli import run_main
from ds_kronos.config import parse_config
from ds_kronos.train.config import TrainConfig


def main(argv=None) -> None:
    config = parse_config(TrainConfig, argv)
    from ds_kronos.train.trainer import run_training  # heavy imports after the arguments are known to be valid
    run_training(config)


if __name__ == "__main__":
    run_main(main)
