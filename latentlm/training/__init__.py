"""Training: the pure steps, the jitted Trainer, the loop and the pipeline of
stages, checkpoints, loading a trained run, and the run summary."""
