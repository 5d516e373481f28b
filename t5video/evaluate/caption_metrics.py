"""Caption metrics: CIDEr-D, BLEU-1..4, ROUGE-L and METEOR, as the COCO toolkit scores them.

The scores here are our own implementations of the definitions used by the
``pycocoevalcap`` package (the COCO caption evaluation toolkit), and they give
the same numbers as that package on the same tokenised inputs (see
``tests/test_caption_metrics.py``). Every score is reported the way
``pycocoevalcap`` reports it: BLEU, ROUGE-L and METEOR as fractions in [0, 1]
(multiply by 100 for the percentages papers print), CIDEr-D on its own scale
(x10, so a perfect consensus caption scores around 10 at most, and typical
systems 0.3-1.5).

Inputs are ``refs: dict[key, list[str]]`` (one or more references per video)
and ``cands: dict[key, list[str]]`` (exactly one candidate per video), with
the same keys. :func:`tokenize` turns raw captions into the lower-cased,
punctuation-free, space-separated form the scorers expect, either with the
Stanford PTB tokenizer that ships inside ``pycocoevalcap`` (needs Java) or
with a pure-Python tokenizer that mimics it on ordinary captions.

Conventions carried over from ``pycocoevalcap`` on purpose, so numbers are
comparable with published ones:

* BLEU is corpus-level (clipped n-gram counts summed over the corpus) with the
  "closest" effective reference length (ties go to the shorter reference) and
  the toolkit's smoothing constants ``1e-15 / 1e-9``.
* CIDEr-D takes its document frequencies from the references of the evaluated
  set itself, uses ``log(number of videos)`` as the reference-corpus size,
  clips candidate tf-idf weights at the reference's, applies a Gaussian length
  penalty with sigma 6, averages over n = 1..4 and the references, and
  multiplies by 10. The "length" in that penalty is, as in the toolkit, the
  number of bigrams of a sentence (``max(words - 1, 0)``).
* ROUGE-L uses beta 1.2 and combines the best precision and the best recall
  over the references (each maximised separately). Sentences are split on
  single spaces, as the toolkit does.
* METEOR 1.5 is computed by the jar bundled with ``pycocoevalcap`` (English,
  ``-norm``), driven through its ``-stdio`` protocol.
"""

from __future__ import annotations

import atexit
import collections
import math
import os
import re
import shutil
import subprocess
import threading
from typing import Hashable, Mapping, Sequence

from absl import logging
import numpy as np

Key = Hashable
Captions = Mapping[Key, Sequence[str]]

# Tokens dropped after PTB tokenisation. This is pycocoevalcap's list verbatim,
# including its upper-case bracket names: the tokenizer runs with -lowerCase,
# so brackets survive as "-lrb-" / "-rrb-" tokens there, and therefore here.
PTB_PUNCTUATIONS = frozenset([
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!",
    ",", ":", "-", "--", "...", ";"
])


def _pycocoevalcap_dir() -> str | None:
  """Returns the installed pycocoevalcap package folder, or None."""
  try:
    import pycocoevalcap  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  # A namespace package (no __init__.py): its folder comes from __path__.
  paths = list(getattr(pycocoevalcap, "__path__", []))
  return os.path.abspath(paths[0]) if paths else None


def _java() -> str | None:
  return shutil.which("java")


def _jar(subdir: str, name: str) -> str | None:
  root = _pycocoevalcap_dir()
  if root is None:
    return None
  path = os.path.join(root, subdir, name)
  return path if os.path.isfile(path) else None


def java_tokenizer_available() -> bool:
  """True when Java and pycocoevalcap's Stanford CoreNLP jar are both present."""
  return _java() is not None and _jar("tokenizer", "stanford-corenlp-3.4.1.jar") is not None


def meteor_available() -> bool:
  """True when Java and pycocoevalcap's METEOR 1.5 jar are both present."""
  return _java() is not None and _jar("meteor", "meteor-1.5.jar") is not None


# ---------------------------------------------------------------------------
# Input checks.
# ---------------------------------------------------------------------------


def _check_inputs(refs: Captions, cands: Captions) -> list[Key]:
  """Validates the two caption dicts and returns the keys in refs' order."""
  if not isinstance(refs, Mapping) or not isinstance(cands, Mapping):
    raise TypeError("refs and cands must be dicts {key: [caption, ...]}, got "
                    f"{type(refs).__name__} and {type(cands).__name__}")
  if set(refs) != set(cands):
    only_r = sorted(map(repr, set(refs) - set(cands)))[:5]
    only_c = sorted(map(repr, set(cands) - set(refs)))[:5]
    raise ValueError("refs and cands must have the same keys; only in refs: "
                     f"{only_r}, only in cands: {only_c}")
  if not refs:
    raise ValueError("no captions to score: refs and cands are empty")
  for key in refs:
    r, c = refs[key], cands[key]
    if isinstance(r, str) or not isinstance(r, Sequence) or len(r) < 1:
      raise ValueError(f"refs[{key!r}] must be a non-empty list of strings, got {r!r}")
    if isinstance(c, str) or not isinstance(c, Sequence) or len(c) != 1:
      raise ValueError(f"cands[{key!r}] must be a list holding exactly one string, got {c!r}")
    for s in list(r) + list(c):
      if not isinstance(s, str):
        raise TypeError(f"caption for key {key!r} is {type(s).__name__}, not str: {s!r}")
  return list(refs)


# ---------------------------------------------------------------------------
# Tokenisation.
# ---------------------------------------------------------------------------

# Words whose trailing period belongs to the word in the PTB lexer (a subset of
# its abbreviation list that covers what captions contain).
_ABBREVIATIONS = frozenset("""
mr mrs ms dr prof gen rep sen st sr jr rev col lt sgt capt cmdr gov pres hon
jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues wed thu thur thurs fri sat sun
etc vs no nos ft inc corp co ltd bros dept est fig approx mt ave blvd rd
""".split())
_ACRONYM = re.compile(r"^(?:[a-z]\.)+[a-z]?$|^[a-z]$")  # e.g. "u.s.", "e.g", "c"
_CLITIC = re.compile(r"^(.+?)('s|'re|'ve|'ll|'d|'m)$")
_SPECIAL_SPLITS = {
    "cannot": ["can", "not"], "gonna": ["gon", "na"], "gotta": ["got", "ta"],
    "wanna": ["wan", "na"], "can't": ["ca", "n't"], "won't": ["wo", "n't"],
    "ain't": ["ai", "n't"], "shan't": ["sha", "n't"],
}
_BRACKETS = {"(": " -lrb- ", ")": " -rrb- ", "[": " -lsb- ", "]": " -rsb- ",
             "{": " -lcb- ", "}": " -rcb- "}
# Typographic characters PTB normalises to their ASCII forms.
_UNICODE_PUNCT = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2018": "'",
                                "\u2019": "'", "\u2013": " -- ", "\u2014": " -- ",
                                "\u2026": " ... "})
_TRAILING = re.compile(r"(\.\.\.|--|[!?]+|[,;:'`%])$")
_LEADING = re.compile(r"^(\.\.\.|--|[$#`']|[!?]+)")


def _split_word(word: str) -> list[str]:
  """Splits one lower-cased, whitespace-free chunk into PTB-style tokens."""
  head: list[str] = []
  tail: list[str] = []
  # Leading symbols ("$5", "#1", "'quoted", "--x"); "'90s" keeps its apostrophe.
  while word:
    m = _LEADING.match(word)
    if not m or re.match(r"^'\d", word):
      break
    head.append(m.group(1))
    word = word[len(m.group(1)):]
  # Trailing punctuation. A final period stays on abbreviations ("mr.") and
  # acronyms or initials ("u.s.", "e.g.", "c."), and is split off otherwise.
  while word:
    m = _TRAILING.search(word)
    if m:
      tail.insert(0, m.group(1))
      word = word[:m.start()]
    elif word == ".":
      tail.insert(0, ".")
      word = ""
    elif word.endswith("."):
      stem = word[:-1]
      if stem in _ABBREVIATIONS or _ACRONYM.match(stem):
        break
      tail.insert(0, ".")
      word = stem
    else:
      break
  middle: list[str] = []
  # Dashes, ellipses and commas inside a chunk ("fast--very", "a...b", "a,b";
  # "1,000" stays whole).
  for piece in re.split(r"(--|\.\.\.|(?<!\d),|,(?!\d))", word):
    if not piece:
      continue
    clitic = _CLITIC.match(piece)
    if piece in ("--", "...", ","):
      middle.append(piece)
    elif piece in _SPECIAL_SPLITS:
      middle.extend(_SPECIAL_SPLITS[piece])
    elif piece.endswith("n't") and len(piece) > 3:
      middle.extend([piece[:-3], "n't"])
    elif clitic and not piece.startswith("'"):
      middle.extend([clitic.group(1), clitic.group(2)])
    else:
      middle.append(piece)
  return head + middle + tail


def ptb_tokenize_python(sentence: str) -> str:
  """Pure-Python approximation of the COCO toolkit's PTB tokenisation of one caption.

  It lower-cases, splits punctuation, quotes, brackets and English clitics off
  words the way Stanford's PTBTokenizer does (``"don't" -> "do n't"``,
  ``"dog's" -> "dog 's"``, ``"(" -> "-lrb-"``, abbreviations such as ``"mr."``
  and acronyms such as ``"u.s."`` keep their period, numbers such as ``"5.00"``
  and ``"1,000"`` stay whole), then drops the tokens in
  :data:`PTB_PUNCTUATIONS`, as ``pycocoevalcap`` does after the Java tokenizer.
  It agrees with the Java tokenizer on ordinary captions (tested); rare
  constructions (URLs, emoticons, unusual abbreviations) may differ.

  Args:
    sentence: a raw caption.

  Returns:
    The tokens joined by single spaces.
  """
  text = sentence.replace("\n", " ").lower().translate(_UNICODE_PUNCT)
  text = text.replace('"', " ")
  for bracket, name in _BRACKETS.items():
    text = text.replace(bracket, name)
  tokens: list[str] = []
  for chunk in text.split():
    tokens.extend(_split_word(chunk))
  return " ".join(t for t in tokens if t not in PTB_PUNCTUATIONS)


def _ptb_tokenize_java(sentences: list[str]) -> list[str]:
  """Runs Stanford's PTBTokenizer (pycocoevalcap's jar) on sentences, one per line."""
  jar = _jar("tokenizer", "stanford-corenlp-3.4.1.jar")
  java = _java()
  if jar is None or java is None:
    raise RuntimeError("the Java PTB tokenizer needs `java` on PATH and pycocoevalcap's "
                       "stanford-corenlp-3.4.1.jar; use backend='python' instead")
  text = "\n".join(s.replace("\n", " ").replace("\r", " ") for s in sentences) + "\n"
  proc = subprocess.run(
      [java, "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
       "-lowerCase"],
      input=text.encode("utf-8"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"PTBTokenizer failed (exit {proc.returncode}): "
                       f"{proc.stderr.decode('utf-8', 'replace')[-2000:]}")
  lines = proc.stdout.decode("utf-8").split("\n")
  if lines and lines[-1] == "":
    lines = lines[:-1]
  if len(lines) != len(sentences):
    raise RuntimeError(f"PTBTokenizer returned {len(lines)} lines for {len(sentences)} "
                       "captions; a caption may contain an unusual line separator")
  return [" ".join(w for w in line.rstrip().split(" ") if w not in PTB_PUNCTUATIONS)
          for line in lines]


def tokenize(captions: Captions, backend: str = "auto") -> dict[Key, list[str]]:
  """Tokenises captions the way the COCO toolkit does before scoring.

  Args:
    captions: ``{key: [caption, ...]}``.
    backend: ``'java'`` (Stanford PTBTokenizer from pycocoevalcap, exactly
      the toolkit's tokenisation), ``'python'`` (:func:`ptb_tokenize_python`)
      or ``'auto'`` (Java when available, else Python).

  Returns:
    ``{key: [tokenised caption, ...]}`` with the same keys and list lengths.
  """
  if backend not in ("auto", "java", "python"):
    raise ValueError(f"tokenize backend must be 'auto', 'java' or 'python', got {backend!r}")
  keys, flat = [], []
  for key, caps in captions.items():
    if isinstance(caps, str):
      raise ValueError(f"captions[{key!r}] must be a list of strings, got a bare string")
    for c in caps:
      if not isinstance(c, str):
        raise TypeError(f"caption for key {key!r} is {type(c).__name__}, not str: {c!r}")
      keys.append(key)
      flat.append(c)
  if backend == "java" or (backend == "auto" and java_tokenizer_available()):
    out = _ptb_tokenize_java(flat) if flat else []
  else:
    out = [ptb_tokenize_python(s) for s in flat]
  result: dict[Key, list[str]] = {key: [] for key in captions}
  for key, tok in zip(keys, out):
    result[key].append(tok)
  return result


# ---------------------------------------------------------------------------
# BLEU.
# ---------------------------------------------------------------------------


def _ngram_counts(words: Sequence[str], n: int) -> collections.Counter:
  counts: collections.Counter = collections.Counter()
  for k in range(1, n + 1):
    for i in range(len(words) - k + 1):
      counts[tuple(words[i:i + k])] += 1
  return counts


def bleu(refs: Captions, cands: Captions, n: int = 4) -> tuple[list[float], list[list[float]]]:
  """Corpus BLEU-1..n with the COCO toolkit's conventions.

  Args:
    refs: ``{key: [tokenised reference, ...]}``.
    cands: ``{key: [tokenised candidate]}``.
    n: the largest n-gram order.

  Returns:
    ``(corpus, per_item)``: ``corpus[k-1]`` is BLEU-k of the whole set (a
    fraction); ``per_item[k-1][i]`` is BLEU-k of the i-th key alone.
  """
  keys = _check_inputs(refs, cands)
  small, tiny = 1e-9, 1e-15
  total_guess = [0] * n
  total_correct = [0] * n
  total_test = 0
  total_ref = 0
  per_item: list[list[float]] = [[] for _ in range(n)]
  for key in keys:
    max_ref_counts: dict[tuple[str, ...], int] = {}
    ref_lens = []
    for ref in refs[key]:
      words = ref.split()
      ref_lens.append(len(words))
      for gram, c in _ngram_counts(words, n).items():
        if c > max_ref_counts.get(gram, 0):
          max_ref_counts[gram] = c
    words = cands[key][0].split()
    test_len = len(words)
    # "closest" reference length; on a tie the shorter one.
    ref_len = min((abs(l - test_len), l) for l in ref_lens)[1]
    guess = [max(0, test_len - k + 1) for k in range(1, n + 1)]
    correct = [0] * n
    for gram, c in _ngram_counts(words, n).items():
      correct[len(gram) - 1] += min(max_ref_counts.get(gram, 0), c)
    total_test += test_len
    total_ref += ref_len
    prod = 1.0
    ratio = (test_len + tiny) / (ref_len + small)
    for k in range(n):
      total_guess[k] += guess[k]
      total_correct[k] += correct[k]
      prod *= (float(correct[k]) + tiny) / (float(guess[k]) + small)
      score = prod ** (1.0 / (k + 1))
      if ratio < 1:
        score *= math.exp(1 - 1 / ratio)
      per_item[k].append(score)
  corpus = []
  prod = 1.0
  ratio = (total_test + tiny) / (total_ref + small)
  for k in range(n):
    prod *= float(total_correct[k] + tiny) / (total_guess[k] + small)
    score = prod ** (1.0 / (k + 1))
    if ratio < 1:
      score *= math.exp(1 - 1 / ratio)
    corpus.append(score)
  return corpus, per_item


# ---------------------------------------------------------------------------
# CIDEr-D.
# ---------------------------------------------------------------------------


def cider_d(refs: Captions, cands: Captions, n: int = 4,
            sigma: float = 6.0) -> tuple[float, np.ndarray]:
  """CIDEr-D with the COCO toolkit's conventions (see the module docstring).

  Args:
    refs: ``{key: [tokenised reference, ...]}``; also the corpus the document
      frequencies are counted on.
    cands: ``{key: [tokenised candidate]}``.
    n: the largest n-gram order.
    sigma: the standard deviation of the Gaussian length penalty.

  Returns:
    ``(mean score, per-key scores [num_keys])``, on the toolkit's x10 scale.
  """
  keys = _check_inputs(refs, cands)
  ref_counts = [[_ngram_counts(r.split(), n) for r in refs[k]] for k in keys]
  cand_counts = [_ngram_counts(cands[k][0].split(), n) for k in keys]
  doc_freq: collections.Counter = collections.Counter()
  for counts_of_refs in ref_counts:
    doc_freq.update(set().union(*[c.keys() for c in counts_of_refs]))
  log_num_docs = math.log(float(len(keys)))
  # idf of every reference n-gram; n-grams no reference has get df 1 (idf log N).
  idf = {gram: log_num_docs - math.log(max(1.0, df)) for gram, df in doc_freq.items()}

  def tfidf(counts):
    """Returns per-order {ngram: weight}, per-order norms, and the bigram count."""
    vec = [dict() for _ in range(n)]
    norm = [0.0] * n
    length = 0
    for gram, tf in counts.items():
      order = len(gram) - 1
      weight = float(tf) * idf.get(gram, log_num_docs)
      vec[order][gram] = weight
      norm[order] += weight * weight
      if order == 1:  # the toolkit measures length in bigrams
        length += tf
    return vec, [math.sqrt(x) for x in norm], length

  scores = np.zeros(len(keys), dtype=np.float64)
  for i in range(len(keys)):
    vec_c, norm_c, len_c = tfidf(cand_counts[i])
    total = [0.0] * n
    for counts in ref_counts[i]:
      vec_r, norm_r, len_r = tfidf(counts)
      penalty = math.exp(-(float(len_c - len_r) ** 2) / (2 * sigma ** 2))
      for order in range(n):
        ref_vec = vec_r[order]
        val = 0.0
        for gram, w in vec_c[order].items():
          w_ref = ref_vec.get(gram, 0.0)
          val += min(w, w_ref) * w_ref  # clipped at the reference's weight
        if norm_c[order] != 0 and norm_r[order] != 0:
          val /= norm_c[order] * norm_r[order]
        total[order] += val * penalty
    scores[i] = sum(total) / n / len(ref_counts[i]) * 10.0
  return float(np.mean(scores)), scores


# ---------------------------------------------------------------------------
# ROUGE-L.
# ---------------------------------------------------------------------------


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
  """Length of the longest common subsequence (dynamic programming, O(|a||b|))."""
  if len(a) < len(b):
    a, b = b, a
  prev = [0] * (len(b) + 1)
  for x in a:
    cur = [0] * (len(b) + 1)
    for j, y in enumerate(b, start=1):
      cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
    prev = cur
  return prev[-1]


def rouge_l(refs: Captions, cands: Captions, beta: float = 1.2) -> tuple[float, np.ndarray]:
  """ROUGE-L F-measure with the COCO toolkit's conventions.

  Args:
    refs: ``{key: [tokenised reference, ...]}``.
    cands: ``{key: [tokenised candidate]}``.
    beta: recall's weight relative to precision.

  Returns:
    ``(mean score, per-key scores [num_keys])`` as fractions.
  """
  keys = _check_inputs(refs, cands)
  scores = np.zeros(len(keys), dtype=np.float64)
  for i, key in enumerate(keys):
    cand = cands[key][0].split(" ")
    precisions, recalls = [], []
    for ref in refs[key]:
      ref_tokens = ref.split(" ")
      lcs = _lcs_length(ref_tokens, cand)
      precisions.append(lcs / float(len(cand)))
      recalls.append(lcs / float(len(ref_tokens)))
    p, r = max(precisions), max(recalls)
    if p != 0 and r != 0:
      scores[i] = ((1 + beta ** 2) * p * r) / float(r + beta ** 2 * p)
  return float(np.mean(scores)), scores


# ---------------------------------------------------------------------------
# METEOR (Java).
# ---------------------------------------------------------------------------


class MeteorScorer:
  """A long-lived METEOR 1.5 process (pycocoevalcap's jar) scoring caption sets.

  Starting the JVM and loading the paraphrase table takes tens of seconds, so
  one process serves many calls; use it as a context manager or call
  :meth:`close`. Thread-safe.
  """

  def __init__(self, memory: str = "2G"):
    jar = _jar("meteor", "meteor-1.5.jar")
    java = _java()
    if jar is None or java is None:
      raise RuntimeError("METEOR needs `java` on PATH and pycocoevalcap's meteor-1.5.jar "
                         f"(java: {java!r}, jar: {jar!r})")
    self._lock = threading.Lock()
    self._proc = subprocess.Popen(
        [java, "-jar", f"-Xmx{memory}", os.path.basename(jar), "-", "-", "-stdio", "-l",
         "en", "-norm"],
        cwd=os.path.dirname(jar), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL)

  def _readline(self) -> str:
    line = self._proc.stdout.readline()
    if not line:
      raise RuntimeError(f"the METEOR process ended unexpectedly (exit code {self._proc.poll()})")
    return line.decode("utf-8").strip()

  def _write(self, line: str) -> None:
    self._proc.stdin.write((line + "\n").encode("utf-8"))
    self._proc.stdin.flush()

  def score(self, refs: Captions, cands: Captions) -> tuple[float, list[float]]:
    """Scores tokenised captions.

    Args:
      refs: ``{key: [tokenised reference, ...]}``.
      cands: ``{key: [tokenised candidate]}``.

    Returns:
      ``(corpus METEOR, per-key METEOR)`` as fractions. The corpus score is
      METEOR's own aggregate over the set (not the mean of the per-key
      scores), as pycocoevalcap reports it.
    """
    keys = _check_inputs(refs, cands)
    with self._lock:
      if self.closed:
        raise RuntimeError("this MeteorScorer is closed")
      stats = []
      for key in keys:
        # "|||" separates fields of the protocol; the toolkit drops it from the
        # hypothesis and squeezes the double space left behind.
        hyp = cands[key][0].replace("|||", "").replace("  ", " ")
        ref_list = [r.replace("|||", "") for r in refs[key]]
        self._write(" ||| ".join(("SCORE", " ||| ".join(ref_list), hyp)))
        stats.append(self._readline())
      self._write("EVAL ||| " + " ||| ".join(stats))
      per_key = [float(self._readline()) for _ in keys]
      corpus = float(self._readline())
    return corpus, per_key

  @property
  def closed(self) -> bool:
    """True once the Java process has ended (closed or crashed)."""
    return self._proc.poll() is not None

  def close(self) -> None:
    """Stops the Java process."""
    with self._lock:
      if self._proc.poll() is None:
        try:
          self._proc.stdin.close()
        except OSError:
          pass
        self._proc.kill()
        self._proc.wait()

  def __enter__(self) -> "MeteorScorer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


_SHARED_METEOR: MeteorScorer | None = None
_SHARED_LOCK = threading.Lock()


def _shared_meteor() -> MeteorScorer:
  """One METEOR process per Python process, started on first use."""
  global _SHARED_METEOR
  with _SHARED_LOCK:
    if _SHARED_METEOR is None or _SHARED_METEOR.closed:
      _SHARED_METEOR = MeteorScorer()
      atexit.register(_SHARED_METEOR.close)
    return _SHARED_METEOR


def meteor_score(refs: Captions, cands: Captions) -> tuple[float, list[float]]:
  """METEOR 1.5 of tokenised captions through a shared :class:`MeteorScorer`."""
  return _shared_meteor().score(refs, cands)


# ---------------------------------------------------------------------------
# Entry point.
# ---------------------------------------------------------------------------


def compute_caption_metrics(refs: Captions, cands: Captions, *, meteor: bool | str = "auto",
                            tokenizer: str | None = "auto") -> dict[str, float]:
  """Scores one candidate caption per key against its references.

  Args:
    refs: ``{key: [reference caption, ...]}``.
    cands: ``{key: [candidate caption]}`` (a bare string per key is accepted
      too).
    meteor: True (required; raises without Java), False (skipped) or
      ``'auto'`` (computed when Java and the jar are present; otherwise left
      out of the result with a logged warning).
    tokenizer: a :func:`tokenize` backend (``'auto'``, ``'java'``,
      ``'python'``), or None when the captions are already tokenised.

  Returns:
    ``{'CIDEr', 'BLEU-1', 'BLEU-2', 'BLEU-3', 'BLEU-4', 'ROUGE-L'[, 'METEOR']}``,
    scaled as pycocoevalcap reports them: BLEU, ROUGE-L and METEOR as
    fractions in [0, 1], CIDEr (CIDEr-D) on its x10 scale.
  """
  if meteor not in (True, False, "auto"):
    raise ValueError(f"meteor must be True, False or 'auto', got {meteor!r}")
  cands = {k: [v] if isinstance(v, str) else v for k, v in cands.items()}
  _check_inputs(refs, cands)
  if tokenizer is not None:
    refs = tokenize(refs, tokenizer)
    cands = tokenize(cands, tokenizer)
  corpus_bleu, _ = bleu(refs, cands)
  result = {"CIDEr": cider_d(refs, cands)[0]}
  for k, score in enumerate(corpus_bleu, start=1):
    result[f"BLEU-{k}"] = score
  result["ROUGE-L"] = rouge_l(refs, cands)[0]
  if meteor is True or (meteor == "auto" and meteor_available()):
    result["METEOR"] = meteor_score(refs, cands)[0]
  elif meteor == "auto":
    logging.warning("METEOR skipped: it needs `java` on PATH and pycocoevalcap's "
                    "meteor-1.5.jar. SPICE is never computed (it downloads CoreNLP models).")
  return result

