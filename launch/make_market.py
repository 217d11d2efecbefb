"""Write a synthetic pretraining corpus: Parquet bars of several markets and frequencies with known dynamics, and
their true parameters for the oracle (see ds_kronos/data/synthetic/ and docs/pretraining.md).

    python launch/make_market.py --out corpus --symbols 200 --days 250
    python launch/make_market.py --out corpus --spec markets.yaml --frequencies 1D,5min
    python launch/prepare_data.py --parquet corpus/ALPHA/5min --split 0.8,0.1,0.1 --out stores/alpha_5min
"""

from __future__ import annotations

from typing import Sequence

from ds_kronos.cli import run_main
from ds_kronos.config import parse_config
from ds_kronos.data.synthetic.corpus import MakeMarketConfig, write_corpus


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_config(MakeMarketConfig, argv)
    index = write_corpus(config)
    print(f"wrote {index['bars']:,} bars of {len(index['markets'])} market(s) to {config.out} in "
          f"{index['seconds']:.1f} s ({index['bars_per_second']:,} bars/s); held out: "
          f"{', '.join(index['splits']['heldout']) or 'none'}")


if __name__ == "__main__":
    run_main(main)
