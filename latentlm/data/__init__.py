"""Data: text corpora, tokenizers, concept segmentation, the input pipeline.

  corpus.py      TFDS builders (Shakespeare, the user's files) and catalog
                 datasets, read by random access: load_split, split_texts
  tokenizers.py  text <-> ids: get_tokenizer
  segment.py     token ids -> chunks of K tokens for the concept models
  pipeline.py    grain: documents -> units -> packed rows -> batches,
                 checkpointable: make_iterator
"""
