"""A container's entrypoint (PID 1) for training jobs: runs the command, passes SIGTERM/SIGUSR1/SIGINT on to its
ranks (which save a checkpoint and exit 75), reaps orphans, and exits with the command's exit code.

    python launch/entrypoint.py deepspeed --num_gpus 8 launch/train.py --resume ...
    python launch/entrypoint.py --forward TERM,USR1 -- deepspeed ...

How and why: ds_kronos/entrypoint.py; a Kubernetes Job that uses it: docs/multinode.md (preemption).
"""

from ds_kronos.cli import run_main
from ds_kronos.entrypoint import main

if __name__ == "__main__":
    run_main(main)
