"""Per-rank memory of a Kronos training configuration, and the least-sharded DeepSpeed config that fits a device.

    python launch/plan.py --predictor base --world_size 8 --zero_stage 2 --batch_size 32 --context 512 --precision bf16
    python launch/plan.py --predictor 3b --world_size 8 --batch_size 16 --precision bf16 --memory_gb 80
    python launch/plan.py --predictor 1b --world_size 2 --device cpu --batch_size 1 --context 100 --precision bf16 \
        --memory_gb 24 --disk_gb 60

On --device cpu, --memory_gb is the host memory of a node, shared by its ranks; --disk_gb (free disk per node)
makes ZeRO-3 + NVMe offload (ZeRO-Infinity) a candidate. --offload takes none|cpu|nvme (true/false still work).

Model states come from DeepSpeed's estimators where they exist (bf16 ZeRO-2/3), else from the same byte
convention (the table says which); activations are ds_kronos' analytic count. Options: --help.
"""

from ds_kronos.cli import run_main
from ds_kronos.config import parse_config
from ds_kronos.plan import PlanRequest, plan, recommend
from ds_kronos.plan.report import breakdown, ladder


def main(argv=None) -> None:
    request = parse_config(PlanRequest, argv)
    planned = plan(request)
    print(breakdown(planned))
    chosen = None
    if request.memory_gb is not None:
        recommendation = recommend(request)
        chosen = recommendation.chosen
        print()
        print(ladder(recommendation, request.memory_gb, request.margin, request.disk_gb))
    if request.write_ds_config:
        (chosen or planned).ds_config.write(request.write_ds_config)
        print(f"wrote {request.write_ds_config}")


if __name__ == "__main__":
    run_main(main)
