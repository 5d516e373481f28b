"""The stand-ins' corpora: captioned stills for CLIP, span-corrupted text for T5.

Stills come from the synthetic world itself (:mod:`t5video.data.synthetic`):
:func:`~t5video.data.synthetic.sample_specs` lays out a scene (background,
a first object and up to two others that do not overlap, camera noise) and
:func:`~t5video.data.synthetic.render_frames` draws it. Only classes whose
events leave the objects' layout unchanged (:data:`STILL_CLASSES`) are
sampled, and their events are dropped, so a still shows every object at its
own colour, size and place: no motion, and nothing about time. Each still's
captions name its objects (size, colour, shape, position), how many there are
and the background, with the generator's own synonyms and some details left
out, as web alt-text does. Training stills may come in minimal pairs
(:func:`twin`: the first object's shape or the background changed).

The T5 corpus is the world's text: captions, moment queries and subtitle
lines of clips sampled (not rendered) with seeds of their own, plus still
captions. Its sequences are packed and corrupted as T5 pretrains
(:func:`span_corruption`).

Every seed is derived from ``config.seed`` and a purpose (:func:`derived_seed`),
so none equals the seeds the demo renders its datasets with (0).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from t5video.data import synthetic

# Classes whose key object keeps its place and size (only its opacity or colour
# changes): with their events dropped, the generator's layout check holds for a still.
STILL_CLASSES = tuple(name for name, actions in synthetic.CLASSES
                      if all(synthetic.ACTIONS[a] in ("alpha", "colour") for a in actions))

NUMBER_WORDS = ("one", "two", "three")
_PREFIXES = ("a photo of ", "an image of ", "a picture of ", "a rendering of ")
_GENERIC = ("object", "shape", "thing")

# Purposes of the derived seeds.
_SEEDS = {"train_stills": 1, "heldout_stills": 2, "captions": 3, "train_text": 4, "heldout_text": 5,
          "clip": 6, "t5": 7, "corruption": 8, "heldout_corruption": 9, "text_stills": 10}


def derived_seed(seed: int, purpose: str) -> int:
  """A 31-bit seed for ``purpose`` (a key of ``_SEEDS``) from the config's ``seed``."""
  return int(np.random.SeedSequence([int(seed), _SEEDS[purpose]]).generate_state(1)[0] >> 1)


# =============================================================================
# Stills
# =============================================================================

@dataclasses.dataclass(frozen=True)
class Still:
  """One still: its scene (a ``ClipSpec`` without events) and what it shows."""
  spec: synthetic.ClipSpec

  @property
  def objects(self) -> tuple[synthetic.ObjectSpec, ...]:
    return (self.spec.key,) + tuple(self.spec.distractors)

  @property
  def background(self) -> str:
    return self.spec.background


def sample_stills(num: int, seed: int, *, size: int = 64, backgrounds: Sequence[str] = (),
                  max_distractors: int = 2) -> list[Still]:
  """``num`` still scenes drawn by the synthetic generator (nothing rendered yet)."""
  specs = synthetic.sample_specs(
      num, seed, sizes=((size, size),), classes=STILL_CLASSES, class_prior="uniform",
      backgrounds=tuple(backgrounds) or None, max_distractors=max_distractors,
      # The shortest clips: the generator tracks the (dropped) events over fewer frames.
      min_seconds=0.5, max_seconds=0.5, fps_choices=(8,))
  return [Still(dataclasses.replace(s, events=(), num_frames=1, fps=1)) for s in specs]


def render_stills(stills: Sequence[Still]) -> np.ndarray:
  """uint8 ``[N, size, size, 3]``: each still drawn by the generator's renderer."""
  return np.stack([synthetic.render_frames(s.spec)[0] for s in stills])


# Stills are sampled in chunks of this many, each chunk with its own seed, so that
# worker processes can draw them in parallel and the result does not depend on how many.
CHUNK = 500


def chunk_seeds(num: int, seed: int) -> list[tuple[int, int]]:
  """``(size, seed)`` of each chunk of ``num`` stills."""
  sizes = [min(CHUNK, num - start) for start in range(0, num, CHUNK)]
  return [(n, int(np.random.SeedSequence([seed, i]).generate_state(1)[0] >> 1)) for i, n in enumerate(sizes)]


def twin(still: Still, rng: np.random.Generator, backgrounds: Sequence[str] = ()) -> Still:
  """``still`` with one thing changed: its first object's shape, or the background's kind.

  Everything else (places, colours, sizes, background tones, camera noise) is the
  same, so a batch holding both is a pair of hard negatives: only the shape (or
  the texture) tells their captions apart. The layout stays valid: every shape
  fits the same radius, and the background does not touch the objects.
  """
  kinds = [b for b in (backgrounds or synthetic.BACKGROUNDS) if b != still.background]
  if not kinds or rng.random() < 0.5:
    shape = _pick(rng, [x for x in synthetic.SHAPES if x != still.spec.key.shape])
    return Still(dataclasses.replace(still.spec, key=dataclasses.replace(still.spec.key, shape=shape)))
  return Still(dataclasses.replace(still.spec, background=_pick(rng, kinds)))


def rendered_chunk(num: int, seed: int, *, twins: bool = False, **kwargs) -> tuple[list[Still], np.ndarray]:
  """One chunk: ``num`` stills (:func:`sample_stills` arguments) and their pixels.

  ``twins``: ``num // 2`` stills, each followed by its :func:`twin` (pairs at
  indices ``2i, 2i + 1``).
  """
  if not twins:
    stills = sample_stills(num, seed, **kwargs)
  else:
    rng = np.random.default_rng([seed, 1])
    stills = []
    for still in sample_stills(num // 2, seed, **kwargs):
      stills += [still, twin(still, rng, kwargs.get("backgrounds", ()))]
  return stills, render_stills(stills)


def still_texts(num: int, seed: int, caption_seed: int, **kwargs) -> list[str]:
  """One caption each of ``num`` stills (sampled, not rendered): still text for the T5 corpus."""
  return [caps[0] for caps in still_captions(sample_stills(num, seed, **kwargs), 1, caption_seed)]


def position_phrase(obj: synthetic.ObjectSpec) -> str:
  """Where ``obj`` sits, in thirds of the frame: 'at the top left', 'on the right', 'in the centre'."""
  h = "left" if obj.x < 1 / 3 else "right" if obj.x > 2 / 3 else ""
  v = "top" if obj.y < 1 / 3 else "bottom" if obj.y > 2 / 3 else ""  # image y grows downwards
  if h and v:
    return f"at the {v} {h}"
  if h:
    return f"on the {h}"
  if v:
    return f"at the {v}"
  return "in the centre"


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
  return options[int(rng.integers(len(options)))]


def _with_article(phrase: str) -> str:
  """'a' or 'an' by the first sound of the words used here ('a uniform', 'an orange')."""
  return ("an " if phrase[0] in "aeiou" and not phrase.startswith("uni") else "a ") + phrase


def noun_phrase(rng: np.random.Generator, obj: synthetic.ObjectSpec, *, full: bool = False,
                size_p: float = 0.6) -> str:
  """'a large crimson disc', 'a blue object', 'a star' (``full``: size, colour and shape).

  Not ``full``: the size is named with probability ``size_p`` ('medium' less often,
  as the clip captions do), the colour is left out 25% of the time (then only the
  shape tells the object) and the shape replaced by 'object' / 'shape' / 'thing'
  10% of the time, never both.
  """
  words = []
  if full or rng.random() < (size_p if obj.size != "medium" else size_p / 2):
    words.append(_pick(rng, synthetic.SIZE_WORDS[obj.size]))
  drop_colour = not full and rng.random() < 0.25
  if not drop_colour:
    words.append(obj.colour if rng.random() < 0.7 else _pick(rng, synthetic.COLOUR_WORDS[obj.colour]))
  if not full and not drop_colour and rng.random() < 0.1:
    words.append(_pick(rng, _GENERIC))
  else:
    words.append(obj.shape if rng.random() < 0.6 else _pick(rng, synthetic.SHAPE_WORDS[obj.shape]))
  return _with_article(" ".join(words))


def _scene(rng: np.random.Generator, background: str) -> str:
  bg = _pick(rng, synthetic.BACKGROUND_WORDS[background])
  form = _pick(rng, ("on {} background", "against {} background", "in front of {} backdrop",
                     "over {} background"))
  return form.format(_with_article(bg))


def caption(still: Still, rng: np.random.Generator) -> str:
  """One caption of ``still``: its objects (with places), their number and the background.

  Single objects are often described fully; with several, each gets a shorter
  description, so that captions stay within CLIP's text length.
  """
  objs = list(still.objects)
  rng.shuffle(objs)
  prefix = _pick(rng, _PREFIXES) if rng.random() < 0.4 else ""
  single = len(objs) == 1
  full = single and rng.random() < 0.5
  parts = []
  for o in objs:
    np_ = noun_phrase(rng, o, full=full, size_p=0.6 if single else 0.35)
    if rng.random() < (0.7 if single else 0.6):
      np_ += " " + position_phrase(o)
    parts.append(np_)
  listed = parts[0] if single else ", ".join(parts[:-1]) + " and " + parts[-1]
  scene = _scene(rng, still.background) if rng.random() < 0.7 else ""
  if not single and rng.random() < 0.5:
    count = f"{NUMBER_WORDS[len(objs) - 1]} {_pick(rng, ('objects', 'shapes'))}"
    return f"{prefix}{count}" + (f" {scene}" if scene else "") + f": {listed}"
  return f"{prefix}{listed}" + (f" {scene}" if scene else "")


def still_captions(stills: Sequence[Still], per_still: int, seed: int) -> list[list[str]]:
  """``per_still`` captions of every still (distinct where the grammar allows)."""
  out = []
  for i, still in enumerate(stills):
    rng = np.random.default_rng([seed, i])
    caps: list[str] = []
    for _ in range(8 * per_still):
      c = caption(still, rng)
      if c not in caps:
        caps.append(c)
      if len(caps) == per_still:
        break
    while len(caps) < per_still:
      caps.append(caps[-1])
    out.append(caps)
  return out


def labels(still: Still) -> dict[str, str]:
  """What a zero-shot protocol asks about ``still``: its first object's attributes and the count."""
  key = still.spec.key
  return {"colour": key.colour, "shape": key.shape, "size": key.size, "background": still.background,
          "count": NUMBER_WORDS[len(still.objects) - 1]}


def label_names(attribute: str, max_objects: int) -> tuple[str, ...]:
  """The vocabulary a zero-shot protocol chooses from, in the generator's order."""
  return {"colour": tuple(synthetic.COLOURS), "shape": tuple(synthetic.SHAPES),
          "size": tuple(synthetic.SIZES), "background": tuple(synthetic.BACKGROUNDS),
          "count": NUMBER_WORDS[:max_objects]}[attribute]


def prompt_word(attribute: str, name: str) -> str:
  """The word a prompt uses for a label ('medium' is 'medium-sized', as the captions say)."""
  return synthetic.SIZE_WORDS[name][0] if attribute == "size" else name


# =============================================================================
# Text for T5
# =============================================================================

def clip_texts(num_clips: int, seed: int) -> list[str]:
  """Captions, moment queries and subtitle lines of ``num_clips`` sampled clips (none rendered)."""
  out = []
  for spec in synthetic.sample_specs(num_clips, seed):
    out.extend(spec.captions)
    out.extend(spec.queries)
    if spec.subtitle:
      out.append(spec.subtitle)
  return out


def pack(token_lists: Sequence[Sequence[int]], length: int) -> np.ndarray:
  """Concatenates the documents' tokens and cuts the stream into ``[N, length]`` chunks
  (the remainder is dropped), as T5's ``reduce_concat_tokens`` + ``split_tokens`` do."""
  stream = np.fromiter((t for toks in token_lists for t in toks), dtype=np.int32)
  n = len(stream) // length
  if n == 0:
    raise ValueError(f"the text has {len(stream)} tokens, fewer than one chunk of {length}")
  return stream[: n * length].reshape(n, length)


def random_spans_noise_mask(length: int, noise_density: float, mean_noise_span_length: float,
                            rng: np.random.Generator) -> np.ndarray:
  """T5's noise mask (``random_spans_noise_mask`` of t5.data.preprocessors), in numpy.

  ``round(length * noise_density)`` noise tokens in ``round(noise / mean_span)``
  spans, alternating with non-noise spans, the first span non-noise; span
  lengths are random segmentations. Returns bool ``[length]``.
  """
  num_noise = int(np.clip(round(length * noise_density), 1, length - 1))
  num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)
  num_nonnoise = length - num_noise

  def segmentation(num_items: int, num_segments: int) -> np.ndarray:
    first = np.zeros(num_items, np.int64)  # 1 where a segment starts (items 1..n-1)
    first[1:][rng.permutation(num_items - 1)[: num_segments - 1]] = 1
    return np.bincount(np.cumsum(first), minlength=num_segments)  # [num_segments]

  noise_lengths = segmentation(num_noise, num_spans)
  nonnoise_lengths = segmentation(num_nonnoise, num_spans)
  interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)  # [2 * spans]
  starts = np.cumsum(interleaved)[:-1]
  indicator = np.zeros(length, np.int64)
  indicator[starts] = 1
  return np.cumsum(indicator) % 2 == 1


def _sentinelise(tokens: np.ndarray, mask: np.ndarray, sentinels: Sequence[int]) -> np.ndarray:
  """Each span of ``mask`` becomes one sentinel (T5's ``noise_span_to_unique_sentinel``)."""
  starts = mask & ~np.concatenate([[False], mask[:-1]])
  out, k = [], 0
  for tok, m, s in zip(tokens, mask, starts):
    if s:
      out.append(sentinels[k])
      k += 1
    elif not m:
      out.append(int(tok))
  return np.asarray(out, np.int32)


def span_corruption(chunks: np.ndarray, *, noise_density: float, mean_noise_span_length: float,
                    sentinels: Sequence[int], eos_id: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """T5's span corruption of packed ``chunks [N, L]``: ``(inputs [N, Li], targets [N, Lt])``.

  Inputs keep the unmasked tokens with one sentinel per dropped span; targets
  list each sentinel followed by the span it replaced; both end with EOS.
  Every chunk has the same length, so all rows have the same lengths.
  """
  rng = np.random.default_rng(seed)
  inputs, targets = [], []
  for row in chunks:
    mask = random_spans_noise_mask(len(row), noise_density, mean_noise_span_length, rng)
    inputs.append(np.append(_sentinelise(row, mask, sentinels), eos_id))
    targets.append(np.append(_sentinelise(row, ~mask, sentinels), eos_id))
  return np.stack(inputs).astype(np.int32), np.stack(targets).astype(np.int32)
