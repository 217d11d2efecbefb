"""Whether and why a training run stops (signals, the stop file, early stop, divergence, skipped steps,
roll-backs); entry point: run_control.RunControl."""
