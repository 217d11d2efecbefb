"""The DeepSpeed engine of a training run (exact masters, compile, gradient reduction, schedule, fine-tuning);
entry point: build.build_engine."""
