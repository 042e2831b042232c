"""Models: the transformer backbone and the networks built from it."""
