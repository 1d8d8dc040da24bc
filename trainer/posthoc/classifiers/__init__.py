"""One post-hoc classifier per module; each registers itself (trainer.posthoc.registry)."""
