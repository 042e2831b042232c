"""Tokenizers: text <-> int32 ids: bytes, or SentencePiece BPE (spm:VOCAB).

Every tokenizer has `encode`, `decode`, `decode_bytes`, `token_byte_lengths`
and the attributes `pad_id`, `bos_id`, `eos_id`, `vocab_size`. `encode` adds
no special ids: the pipeline appends EOS per document, and models decide
about BOS.
"""

from latentlm.core import config_lib
from latentlm.data.byte_tokenizer import ByteTokenizer
from latentlm.data.byte_tokenizer import NUM_BYTES  # tokenizers.NUM_BYTES


def _sentencepiece(data_config, arg):
  # Imported when used: it needs sentencepiece and the corpus (TFDS), which
  # byte models never load.
  from latentlm.data import sentencepiece_tokenizer  # pylint: disable=g-import-not-at-top
  return sentencepiece_tokenizer.from_data_config(data_config, arg)


# Name -> constructor taking the data config and the text after 'NAME:'.
TOKENIZERS = {
    'bytes': lambda data_config, arg: ByteTokenizer(),
    'spm': _sentencepiece,  # spm:VOCAB, trained on the training split
}


def get_tokenizer(data_config):
  """The tokenizer named by `data_config.tokenizer` ('bytes', 'spm:1024')."""
  name, _, arg = data_config.tokenizer.partition(':')
  name = config_lib.choose('data.tokenizer', name, TOKENIZERS)
  return TOKENIZERS[name](data_config, arg)
