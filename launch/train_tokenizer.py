"""Fine-tune a Kronos tokenizer with DeepSpeed (upstream's first stage; same launcher, ds_configs and options).

    deepspeed --num_gpus N launch/train_tokenizer.py --data PREPARED --tokenizer ./Kronos-Tokenizer-base [options]
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 launch/train_tokenizer.py ...   # CPU-only machine

The best tokenizer is saved as SAVE_DIR/best_model/, the folder launch/train.py takes as --tokenizer.
"""

from ds_kronos.cli import run_main
from ds_kronos.config import parse_config
from ds_kronos.train.config import TokenizerTrainConfig


def main(argv=None) -> None:
    config = parse_config(TokenizerTrainConfig, argv)
    from ds_kronos.train.trainer import run_training  # heavy imports after the arguments are known to be valid
    run_training(config)


if __name__ == "__main__":
    run_main(main)
