"""What a training run reports (lines, metrics.jsonl, comet, monitors, summary.json); entry point: observer.Observer."""
