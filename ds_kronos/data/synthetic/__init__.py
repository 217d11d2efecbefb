"""A synthetic pretraining corpus with a known truth: markets whose bars follow a stated process (GJR-GARCH-t with
intraday seasonality, volume that co-moves with volatility, listings and delistings), written as Parquet for the
store, and the true process's own predictive distribution (the oracle) at any origin. See docs/pretraining.md."""

from ds_kronos.data.synthetic.oracle import oracle_paths, oracle_variance
from ds_kronos.data.synthetic.spec import MarketSpec, SymbolSpec, default_markets, load_markets, load_symbol_spec

__all__ = ["MarketSpec", "SymbolSpec", "default_markets", "load_markets", "load_symbol_spec", "oracle_paths",
           "oracle_variance"]
