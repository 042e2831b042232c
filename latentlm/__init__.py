"""latentlm: language models over continuous concept vectors, in JAX."""
