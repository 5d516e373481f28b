"""What the stand-ins are measured by: the CLIP's zero-shot accuracy on held-out
stills and the T5's held-out span-corruption loss, each beside its controls.

Zero-shot: every held-out still against one prompt per label
(``eval.templates``, e.g. "a photo of a {} object" over the colours); the
prompt of highest cosine similarity is the prediction. Colour, shape, size and
background are asked of held-out stills with a single object; count of all
held-out stills. Controls: chance (1 / labels), the majority label's share, and
the same protocol with the untrained CLIP (its initial weights).

T5: mean cross-entropy per target token on span-corrupted text of held-out
clips (other seeds than training), beside the untrained T5 on the same
examples and a unigram model of the training targets.
"""

from __future__ import annotations

import collections
import math
from typing import Sequence

import numpy as np

from t5video.data.tokenizer import ClipTextTokenizer
from t5video.models import clip as clip_lib
from t5video.models import t5 as t5_lib
from t5video.models import vificlip as vifi
from t5video.recipes.standins import config as config_lib
from t5video.recipes.standins import data as data_lib
from t5video.recipes.standins import pretrain


def _batched(fn, arrays: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
  """``fn`` over rows of ``arrays`` in batches (the last one padded, then cut)."""
  n = len(arrays[0])
  out = []
  for start in range(0, n, batch_size):
    rows = [a[start:start + batch_size] for a in arrays]
    short = batch_size - len(rows[0])
    if short:
      rows = [np.concatenate([r, np.repeat(r[-1:], short, axis=0)]) for r in rows]
    out.append(np.asarray(fn(*rows))[: batch_size - short])
  return np.concatenate(out)


class ClipEncoders:
  """Jitted, L2-normalised image and text embeddings of one CLIP (any params), each
  compiled once: inputs go through in fixed-size batches."""

  def __init__(self, model: clip_lib.CLIPModel, tokenizer: ClipTextTokenizer, *, text_len: int,
               batch_size: int, fast_compile: bool = False):
    self.tokenizer, self.text_len, self.batch_size = tokenizer, text_len, batch_size
    self._images = pretrain.Jit(lambda p, x: vifi.l2_normalize(model.apply(
        {"params": p}, clip_lib.clip_preprocess(x), method=clip_lib.CLIPModel.get_image_features)), fast_compile)
    self._texts = pretrain.Jit(lambda p, i, m: vifi.l2_normalize(model.apply(
        {"params": p}, i, m, method=clip_lib.CLIPModel.get_text_features)), fast_compile)

  def images(self, params, pixels: np.ndarray) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` -> ``[N, P]``."""
    return _batched(lambda x: self._images(params, x), [pixels], self.batch_size)

  def texts(self, params, texts: Sequence[str]) -> np.ndarray:
    """``N`` strings -> ``[N, P]``."""
    ids, mask = self.tokenizer(list(texts), self.text_len)
    return _batched(lambda i, m: self._texts(params, i, m), [ids, mask], 16)


def zero_shot(encoders: ClipEncoders, params, pixels: np.ndarray, stills: Sequence[data_lib.Still],
              templates: dict, *, max_objects: int) -> dict[str, dict]:
  """Top-1 zero-shot accuracy per attribute (see the module docstring).

  Returns ``{attribute: {top1, chance, majority, examples, labels, prompt, plain_top1,
  plain_examples}}``; ``plain_*``: the stills on plain backgrounds only, the demo's scenes.
  """
  images = encoders.images(params, pixels)
  truth = [data_lib.labels(s) for s in stills]
  single = np.asarray([len(s.objects) == 1 for s in stills])
  out = {}
  for attribute in config_lib.ATTRIBUTES:
    names = data_lib.label_names(attribute, max_objects)
    rows = np.arange(len(stills)) if attribute == "count" else np.flatnonzero(single)
    if len(names) < 2 or not len(rows):
      continue
    prompts = [templates[attribute].format(data_lib.prompt_word(attribute, n)) for n in names]
    text = encoders.texts(params, prompts)
    pred = np.argmax(images[rows] @ text.T, axis=-1)  # [R, P] x [P, C] -> [R, C] -> [R]
    gold = np.asarray([names.index(truth[i][attribute]) for i in rows])
    counts = collections.Counter(gold.tolist())
    out[attribute] = {"top1": round(float(np.mean(pred == gold)), 4),
                      "chance": round(1.0 / len(names), 4),
                      "majority": round(max(counts.values()) / len(gold), 4),
                      "examples": int(len(rows)), "labels": len(names),
                      "prompt": templates[attribute]}
    # The demo's scenes: plain backgrounds (configs/captiont5/synthetic.py).
    plain = np.asarray([stills[i].background == "plain" for i in rows])
    if attribute != "background" and plain.any():
      out[attribute]["plain_top1"] = round(float(np.mean(pred[plain] == gold[plain])), 4)
      out[attribute]["plain_examples"] = int(plain.sum())
  return out


class HeldoutLoss:
  """Mean cross-entropy per target token (nats) of a T5 (any params) on fixed examples."""

  def __init__(self, model: t5_lib.T5ForConditionalGeneration, inputs: np.ndarray, targets: np.ndarray,
               batch_size: int, fast_compile: bool = False):
    self.inputs, self.targets, self.batch_size = inputs, targets, batch_size
    self._losses = pretrain.Jit(lambda p, i, t: pretrain.token_losses(model, p, i, t), fast_compile)  # [B]

  def __call__(self, params) -> float:
    per_row = _batched(lambda i, t: self._losses(params, i, t), [self.inputs, self.targets], self.batch_size)
    return float(np.mean(per_row))


def unigram_loss(train_targets: np.ndarray, heldout_targets: np.ndarray) -> float:
  """Cross-entropy (nats per token) of the held-out targets under the training targets'
  unigram distribution (add-one smoothed): what a model that ignores the input reaches."""
  vocab = int(max(train_targets.max(), heldout_targets.max())) + 1
  counts = np.bincount(train_targets.reshape(-1), minlength=vocab).astype(np.float64) + 1.0
  logp = np.log(counts / counts.sum())
  return float(-np.mean(logp[heldout_targets.reshape(-1)]))


def chance_loss(vocab_size: int) -> float:
  """``log(vocab)``: a uniform guess over the tokenizer's ids."""
  return math.log(vocab_size)
