"""Validation, forecast validation and best-model selection of a training run; entry point: validator.Validator."""
