"""ds_kronos: DeepSpeed-backed fine-tuning for the Kronos family of financial foundation models."""

__version__ = "0.1.0"
