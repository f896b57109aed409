"""Training: the Trainer and the parts it owns (NaN guard, optimizers, device and precision, tasks, metrics, ranks)."""
