"""Metrics computed from a model and its task: BrierLM, paired intervals,
reconstruction, the concept LM's latent metrics. Below tasks: a task hands
itself (or a run) to them."""
