"""Sampling defaults, one source each, for every sampler and command.

Temperature and top-p are the usual ones for a small LM's samples to read
as text; MAX_BYTES is how much text a sample (or a round trip) shows.
"""

TEMPERATURE = 0.8
TOP_P = 0.95  # token LMs only: a concept LM's head has no nucleus to cut
MAX_BYTES = 400
PROMPT = ''  # unconditional: the model starts a new document
