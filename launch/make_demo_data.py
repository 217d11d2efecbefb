"""Write a synthetic daily market as a Qlib provider folder (see ds_kronos/data/demo_market.py).

    python launch/make_demo_data.py --out demo_qlib --symbols 40 --seed 0     # with the SH000300 benchmark index
    python launch/make_demo_data.py --out demo_qlib --benchmark ''               # without one
"""

from __future__ import annotations

from typing import Sequence

from ds_kronos.cli import run_main
from ds_kronos.config import parse_config
from ds_kronos.data.demo_market import DemoMarketConfig, write_demo_market


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_config(DemoMarketConfig, argv)
    path = write_demo_market(config.out, symbols=config.symbols, seed=config.seed, start=config.start,
                             end=config.end, amount=config.amount, overwrite=config.overwrite,
                             benchmark=config.benchmark or None, ar=config.ar)
    index = f" and benchmark {config.benchmark.upper()}" if config.benchmark else ""
    print(f"wrote demo market with {config.symbols} symbols{index} ({config.start}..{config.end}) to {path}")


if __name__ == "__main__":
    run_main(main)
