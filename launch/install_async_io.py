"""Compile DeepSpeed's async I/O op (NVMe offload) once, at set-up, so that no training run or test compiles it.

    .venv/bin/python launch/install_async_io.py        # `make setup` runs it after installing DeepSpeed

Torch compiles the op on its first load (a few minutes on 2 cores) and holds a lock meanwhile: a run stopped in that
window leaves the lock behind. Without libaio the op cannot be built: this says so and succeeds, since only NVMe
offload needs it (a NVMe run then stops with one line that says what to install).
"""

import sys

from ds_kronos.cli import run_main


def main(argv=None) -> None:
    from deepspeed.accelerator import get_accelerator

    from ds_kronos.train.checkpoint.nvme import load_async_io

    builder = get_accelerator().create_op_builder("AsyncIOBuilder")
    if builder is None or not builder.is_compatible(verbose=False):
        print("note: DeepSpeed's async I/O op cannot be built here (libaio missing); only NVMe offload needs it",
              file=sys.stderr)
        return
    load_async_io(builder)
    print("DeepSpeed's async I/O op is ready (NVMe offload)")


if __name__ == "__main__":
    run_main(main)
