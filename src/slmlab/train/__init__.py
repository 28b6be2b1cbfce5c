"""Training: the loop, objectives, optimizers."""
