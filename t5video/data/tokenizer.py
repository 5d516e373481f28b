"""Text tokenizers for T5-side text: a trained-on-the-spot SentencePiece model
(the synthetic default) or any Hugging Face tokenizer directory.

Both give the same small interface, with T5's id layout (pad 0, eos 1, unk 2).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Iterable, Sequence

import numpy as np

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2


class Tokenizer:
  """``encode`` / ``decode`` with T5's conventions; see the two implementations."""
  pad_id: int = PAD_ID
  eos_id: int = EOS_ID
  vocab_size: int

  def encode(self, text: str) -> list[int]:
    raise TypeError(f"{type(self).__name__} must define encode")

  def decode(self, ids: Sequence[int]) -> str:
    raise TypeError(f"{type(self).__name__} must define decode")

  def encode_batch(self, texts: Sequence[str], max_len: int, *, add_eos: bool = True
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(ids int32 [N, max_len], mask int32 [N, max_len])``, truncated, EOS-terminated."""
    ids = np.full((len(texts), max_len), self.pad_id, np.int32)
    mask = np.zeros((len(texts), max_len), np.int32)
    for i, text in enumerate(texts):
      toks = self.encode(text)[: max_len - 1 if add_eos else max_len]
      if add_eos:
        toks = toks + [self.eos_id]
      ids[i, : len(toks)] = toks
      mask[i, : len(toks)] = 1
    return ids, mask

  def decode_batch(self, ids: np.ndarray) -> list[str]:
    """Decodes rows of ids, stopping at the first EOS and dropping padding."""
    out = []
    for row in np.asarray(ids):
      row = [int(t) for t in row]
      if self.eos_id in row:
        row = row[: row.index(self.eos_id)]
      out.append(self.decode([t for t in row if t != self.pad_id]))
    return out


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model file (``spiece.model``; local or ``gs://``)."""

  def __init__(self, model_file: str):
    import sentencepiece as spm
    from t5video.train import paths  # pylint: disable=g-import-not-at-top
    if paths.is_remote(model_file) and not paths.exists(model_file):
      raise FileNotFoundError(f"{model_file}: SentencePiece model not found")
    local = paths.local_copy(model_file)  # sentencepiece reads local files only
    if not os.path.isfile(local):
      raise FileNotFoundError(f"{model_file}: SentencePiece model not found")
    self.model_file = model_file
    self._sp = spm.SentencePieceProcessor(model_file=local)
    if (self._sp.pad_id(), self._sp.eos_id(), self._sp.unk_id()) != (PAD_ID, EOS_ID, UNK_ID):
      raise ValueError(f"{model_file}: expected T5's ids pad=0 eos=1 unk=2, got "
                       f"{self._sp.pad_id(), self._sp.eos_id(), self._sp.unk_id()}")
    self.vocab_size = self._sp.get_piece_size()

  def encode(self, text: str) -> list[int]:
    return list(self._sp.encode(text))

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  def __getstate__(self):  # picklable for Grain worker processes
    return {"model_file": self.model_file}

  def __setstate__(self, state):
    self.__init__(state["model_file"])


class HFTokenizer(Tokenizer):
  """Any tokenizer directory ``transformers.AutoTokenizer`` reads (e.g. a T5 checkpoint)."""

  def __init__(self, path: str):
    from transformers import AutoTokenizer
    self.path = path
    self._tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    self.pad_id = int(self._tok.pad_token_id if self._tok.pad_token_id is not None else PAD_ID)
    self.eos_id = int(self._tok.eos_token_id if self._tok.eos_token_id is not None else EOS_ID)
    self.vocab_size = len(self._tok)

  def encode(self, text: str) -> list[int]:
    return list(self._tok.encode(text, add_special_tokens=False))

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def __getstate__(self):
    return {"path": self.path}

  def __setstate__(self, state):
    self.__init__(state["path"])


def train_sentencepiece(texts: Iterable[str], out_file: str, vocab_size: int = 512) -> SentencePieceTokenizer:
  """Trains a unigram SentencePiece model with T5's id layout; writes ``out_file``.

  Deterministic for a given corpus. ``hard_vocab_limit=False`` lets a small
  corpus end with fewer pieces than asked.
  """
  import sentencepiece as spm
  from t5video.train import paths  # pylint: disable=g-import-not-at-top
  if not out_file.endswith(".model"):
    raise ValueError(f"out_file must end with .model, got {out_file!r}")
  if paths.is_remote(out_file):  # trained locally, then uploaded
    local = train_sentencepiece(texts, os.path.join(paths.local_mirror(paths.dirname(out_file)),
                                                    paths.basename(out_file)), vocab_size)
    paths.copy(local.model_file, out_file)
    return SentencePieceTokenizer(out_file)
  os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    corpus = os.path.join(tmp, "corpus.txt")
    with open(corpus, "w") as f:
      for t in texts:
        f.write(t.replace("\n", " ") + "\n")
    prefix = os.path.join(tmp, "spiece")
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=prefix, vocab_size=vocab_size, model_type="unigram",
        pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1, hard_vocab_limit=False,
        character_coverage=1.0, num_threads=1, minloglevel=2)
    tmp_out = out_file + ".tmp"
    os.replace(prefix + ".model", tmp_out)
    os.replace(tmp_out, out_file)
  return SentencePieceTokenizer(out_file)


def save_t5_tokenizer(spiece_model: str, out_dir: str, extra_ids: int = 100):
  """Writes an HF T5 tokenizer (``spiece.model`` + ``tokenizer.json`` + config) into ``out_dir``.

  ``AutoTokenizer.from_pretrained(out_dir)`` then gives a ``T5Tokenizer`` whose
  ids equal the SentencePiece ids (pad 0, eos 1, unk 2) followed by
  ``extra_ids`` sentinels, ``<extra_id_0>`` the highest id (T5's layout).
  Returns that tokenizer.
  """
  from transformers import T5Tokenizer  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  dst = os.path.join(out_dir, "spiece.model")
  if os.path.abspath(spiece_model) != os.path.abspath(dst):
    shutil.copy(spiece_model, dst)
  # transformers 5: T5Tokenizer(vocab_file=...) ignores the file; from_pretrained reads it.
  tok = T5Tokenizer.from_pretrained(out_dir, extra_ids=extra_ids)
  tok.save_pretrained(out_dir)
  return tok


def train_clip_bpe(texts: Iterable[str], out_dir: str, vocab_size: int = 1000, *,
                   model_max_length: int = 77):
  """Trains a byte-level BPE in CLIP's format and writes it as an HF CLIP tokenizer.

  The vocabulary is laid out as OpenAI's: the 256 byte symbols, the same with
  the end-of-word suffix ``</w>``, the learnt merges, then
  ``<|startoftext|>`` and ``<|endoftext|>`` as the two highest ids (padding is
  ``<|endoftext|>``). Unseen words fall back to bytes. ``out_dir`` gets
  ``tokenizer.json``, ``tokenizer_config.json``, ``vocab.json`` and
  ``merges.txt``; :func:`t5video.models.clip.load_clip_tokenizer` and
  ``AutoTokenizer`` read it. Returns the ``CLIPTokenizer``.
  """
  import json  # pylint: disable=g-import-not-at-top
  from tokenizers import pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top
  from transformers import CLIPTokenizer  # pylint: disable=g-import-not-at-top
  backend = CLIPTokenizer().backend_tokenizer  # CLIP's normaliser and pre-tokeniser
  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  trainer = trainers.BpeTrainer(
      vocab_size=max(int(vocab_size) - len(alphabet) - 2, len(alphabet) + 1), min_frequency=2,
      special_tokens=[], initial_alphabet=alphabet, end_of_word_suffix="</w>", show_progress=False)
  backend.train_from_iterator(list(texts), trainer=trainer)
  learnt = json.loads(backend.to_str())["model"]
  vocab: dict[str, int] = {}
  for piece in alphabet + [a + "</w>" for a in alphabet] + list(learnt["vocab"]):
    vocab.setdefault(piece, len(vocab))
  for special in ("<|startoftext|>", "<|endoftext|>"):
    vocab[special] = len(vocab)
  merges = [tuple(m) for m in learnt["merges"]]
  tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
  os.makedirs(out_dir, exist_ok=True)
  tok.save_pretrained(out_dir)
  with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
    json.dump(vocab, f, ensure_ascii=False)
  with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
  return tok


def load_tokenizer(path: str) -> Tokenizer:
  """A ``.model`` file → SentencePiece; a directory → HF tokenizer."""
  if path.endswith(".model"):
    return SentencePieceTokenizer(path)
  if os.path.isdir(path):
    return HFTokenizer(path)
  raise FileNotFoundError(f"{path}: neither a SentencePiece .model file nor a tokenizer directory")


# -----------------------------------------------------------------------------
# CLIP-side text (ViFi-CLIP's text tower)
# -----------------------------------------------------------------------------

class ClipTextTokenizer:
  """Texts -> ``(ids int32 [N, L], mask int32 [N, L])`` in the CLIP text layout.

  Every row is ``[start] tokens... [end] pad...``; over-long texts are
  truncated before the end token, which is always kept (it is pooled).

  Args:
    path: a SentencePiece ``.model`` file or an HF CLIP tokenizer directory.
  """

  def __init__(self, path: str):
    self.path = path
    if path.endswith(".model"):
      self._sp = SentencePieceTokenizer(path)
      self._hf = None
      self.pad_id, self.eos_id = PAD_ID, EOS_ID
      self.bos_id = self._sp.vocab_size
      self.vocab_size = self._sp.vocab_size + 1
    else:
      self._sp = None
      from t5video.models import clip as clip_lib  # pylint: disable=g-import-not-at-top
      self._hf = clip_lib.load_clip_tokenizer(path)
      self.pad_id = int(self._hf.pad_token_id if self._hf.pad_token_id is not None else 0)
      self.eos_id = int(self._hf.eos_token_id)
      self.bos_id = int(self._hf.bos_token_id)
      self.vocab_size = len(self._hf)

  @property
  def kind(self) -> str:
    return "sentencepiece" if self._sp is not None else "hf"

  def text_overrides(self) -> dict[str, int]:
    """CLIPTextConfig fields that a from-scratch text tower needs for this tokenizer."""
    return dict(vocab_size=self.vocab_size, pad_token_id=self.pad_id, bos_token_id=self.bos_id,
                eos_token_id=self.eos_id)

  def _pieces(self, text: str) -> list[int]:
    if self._sp is not None:
      return self._sp.encode(text)
    return list(self._hf.encode(text, add_special_tokens=False))

  def __call__(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    if max_len < 3:
      raise ValueError(f"text max_len must be >= 3 (start, a token, end), got {max_len}")
    ids = np.full((len(texts), max_len), self.pad_id, np.int32)
    mask = np.zeros((len(texts), max_len), np.int32)
    for i, text in enumerate(texts):
      row = [self.bos_id] + self._pieces(text)[: max_len - 2] + [self.eos_id]
      ids[i, :len(row)] = row
      mask[i, :len(row)] = 1
    return ids, mask

  def __getstate__(self):  # picklable for Grain worker processes
    return {"path": self.path}

  def __setstate__(self, state):
    self.__init__(state["path"])


def ensure_sentencepiece(path: str, texts: Sequence[str], vocab_size: int) -> str:
  """Trains the SentencePiece model at ``path`` from ``texts`` unless it exists."""
  if not os.path.isfile(path):
    if not texts:
      raise ValueError(f"cannot train the SentencePiece model {path}: no training text")
    train_sentencepiece(texts, path, vocab_size=vocab_size)
  return path
