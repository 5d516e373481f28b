"""Where CaptionT5's concept thoughts come from, and how training picks them.

Two kinds of scorer rank a concept vocabulary against a clip's frames:

* a video-text CLIP trained by the recipe's own stage
  (:class:`t5video.recipes.vificlip.predict.ConceptScorer`, cross-fitted when it
  trained on the clips it scores), or
* an image CLIP used zero-shot (:class:`ImageClipScorer`): an HF CLIP directory
  (a user's ``openai/clip-vit-base-patch16`` snapshot, or the project's stand-in),
  which never saw the fine-tuning clips and so needs no cross-fitting. This is
  the setting of CLIP-guided thought sampling in the paper: a frozen pretrained
  CLIP names what it sees.

Both expose ``num_frames``, ``image_size``, ``fit_frames`` and ``scores``.

Training samples its concepts by similarity (:func:`sample_concepts`,
``thoughts.concept_train='sample'``), so the model meets the scorer's second
and third guesses as well as its first; evaluation takes the top ``k``.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from t5video.models import clip as clip_lib
from t5video.models import vificlip as vifi

CONCEPT_TRAIN = ("sample", "top_k")


def top_concepts(vocab: Sequence[str], sims: np.ndarray, k: int) -> list[str]:
  """The ``k`` concepts of highest similarity, best first (ties by vocabulary order)."""
  return [vocab[j] for j in np.argsort(-np.asarray(sims), kind="stable")[:k]]


def sample_concepts(vocab: Sequence[str], sims: np.ndarray, k: int, temperature: float,
                    rng: np.random.Generator) -> list[str]:
  """``k`` distinct concepts drawn without replacement with probability ``softmax(sims / T)``.

  Drawn as the top ``k`` of ``sims / T + Gumbel noise`` (the Gumbel-top-k trick: the same
  law as drawing one at a time and renormalising), then written best-first by similarity,
  as :func:`top_concepts` writes them. ``T -> 0`` gives the top ``k``.
  """
  sims = np.asarray(sims, np.float64)
  if sims.shape != (len(vocab),):
    raise ValueError(f"sims must be [{len(vocab)}] (one per concept), got {sims.shape}")
  if temperature <= 0:
    raise ValueError(f"thoughts.concept_temperature must be > 0, got {temperature}")
  k = min(int(k), len(vocab))
  keys = sims / temperature + rng.gumbel(size=sims.shape)  # [V]
  picked = np.argsort(-keys, kind="stable")[:k]  # [k]
  picked = picked[np.argsort(-sims[picked], kind="stable")]  # best first
  return [vocab[j] for j in picked]


class ImageClipScorer:
  """Concepts of a clip from an HF image CLIP, zero-shot.

  A clip's embedding is the mean of its frames' L2-normalised image embeddings,
  normalised again; a concept's is its text embedding (the bare word or phrase).
  The score is their cosine similarity.

  Args:
    path: an HF CLIP directory with both towers and its tokenizer.
    num_frames: frames per clip that :meth:`fit_frames` spreads a clip to.
    batch_size: frames per forward pass.
  """

  def __init__(self, path: str, *, num_frames: int, batch_size: int = 64):
    from t5video.data.tokenizer import ClipTextTokenizer  # pylint: disable=g-import-not-at-top
    from t5video.models import hf  # pylint: disable=g-import-not-at-top
    model, self.params = hf.load_hf(path)
    if not isinstance(model, clip_lib.CLIPModel):
      raise ValueError(f"{path}: thoughts.concepts_clip needs a CLIP with both towers (model_type "
                       f"'clip'), got {type(model).__name__}")
    self.path, self.model = path, model
    self.tokenizer = ClipTextTokenizer(path)
    self.num_frames, self.batch_size = int(num_frames), int(batch_size)
    self.image_size = int(model.vision_config.image_size)
    self.text_len = int(model.text_config.max_position_embeddings)
    self._images = jax.jit(lambda p, x: vifi.l2_normalize(model.apply(
        {"params": p}, clip_lib.clip_preprocess(x), method=clip_lib.CLIPModel.get_image_features)))
    self._texts = jax.jit(lambda p, i, m: vifi.l2_normalize(model.apply(
        {"params": p}, i, m, method=clip_lib.CLIPModel.get_text_features)))
    self._text_cache: dict[tuple[str, ...], np.ndarray] = {}

  def fit_frames(self, frames: np.ndarray) -> np.ndarray:
    """``[B, T, H, W, 3]`` uint8 -> ``[B, T, S, S, 3]`` at the CLIP's input size (centre
    square, bilinear); every frame is kept (the embedding is a mean over frames)."""
    frames = np.asarray(frames)
    if frames.ndim != 5:
      raise ValueError(f"frames must be uint8 [batch, frames, H, W, 3], got shape {frames.shape}")
    return clip_lib.fit_square(frames, self.image_size)

  def embed_videos(self, frames: np.ndarray) -> np.ndarray:
    """uint8 ``[B, T, S, S, 3]`` -> ``[B, P]``: the frames' embeddings averaged, normalised."""
    frames = np.asarray(frames)
    b, t = frames.shape[:2]
    flat = frames.reshape((b * t,) + frames.shape[2:])  # [B*T, S, S, 3]
    out = []
    for start in range(0, len(flat), self.batch_size):
      chunk = flat[start:start + self.batch_size]
      short = self.batch_size - len(chunk)
      if short:  # one compiled shape: pad the last chunk, then cut
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], short, axis=0)])
      out.append(np.asarray(self._images(self.params, chunk))[:self.batch_size - short])
    per_frame = np.concatenate(out).reshape(b, t, -1)  # [B*T, P] -> [B, T, P]
    mean = per_frame.mean(axis=1)  # [B, P]
    return mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-6)

  def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
    """Texts -> ``[N, P]`` normalised (cached per concept list)."""
    key = tuple(texts)
    if key not in self._text_cache:
      ids, mask = self.tokenizer(list(texts), self.text_len)
      self._text_cache[key] = np.asarray(self._texts(self.params, ids, mask))
    return self._text_cache[key]

  def scores(self, frames: np.ndarray, concepts: Sequence[str]) -> np.ndarray:
    """Cosine similarities ``[B, len(concepts)]`` of frames ``[B, T, H, W, 3]``."""
    return self.embed_videos(self.fit_frames(frames)) @ self.embed_texts(concepts).T  # [B, P] x [P, V]
