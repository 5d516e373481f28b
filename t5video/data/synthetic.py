"""A procedurally rendered video dataset: t5video's embedded default.

``render_dataset`` draws composed scenes in numpy (coloured shapes over
textured backgrounds, with camera noise), encodes them as real H.264 mp4 files
with PyAV, and writes their annotations in the layouts that the real readers in
:mod:`t5video.data.layouts` consume, so that the synthetic path exercises the
same code as MSR-VTT, QVHighlights or a folder of the user's own videos.

Every clip has one *action class* whose meaning depends on time order (``moves
left`` vs ``moves right``, ``appears`` vs ``disappears``, ``grows`` vs
``shrinks``, two-event classes such as ``grows then shrinks``). Classes follow a
Zipf-like prior over a fixed rank order (:data:`CLASSES`, head first), so the
label distribution is long-tailed. A single frame does not tell the classes of
an order-dependent pair apart: the events are placed symmetrically in time, so
the middle frame shows either end state with equal probability.

Side information is honest by default: the subtitle line is what someone says
while filming (mostly off-topic or vague; motion words only in lines about other
things; rarely one word about the object), and the metadata is partial, noisy
or stale (an object count, the still objects' shapes, another scene's
inventory, a background that is right about half the time). Neither states the
class, the key object or a caption; only the pixels do. ``side_information=
'oracle'`` writes the earlier text that does (a leak, kept to show what the
leakage guard in ``tests/test_side_information.py`` catches).

Everything is a function of the seed: :func:`sample_specs` draws the per-clip
specifications (scene, events, captions, tags, metadata, splits) without
rendering anything, and rendering a spec draws its pixel noise from a seed
stored in the spec, so the same seed gives byte-identical annotations and the
same frames whatever the number of workers.

Output folder (``OUT``)::

  videos/vid00000.mp4 ...              H.264 (libx264, yuv420p) clips
  annotations.jsonl                    generic JSONL layout, one clip a line
  msrvtt/train_val_videodatainfo.json  MSR-VTT layout (train + validate)
  msrvtt/test_videodatainfo.json       MSR-VTT layout (test)
  msrvtt/TrainValVideo/<id>.mp4        relative symlinks into videos/
  msrvtt/TestVideo/<id>.mp4
  qvhighlights/highlight_{train,val,test}_release.jsonl   QVHighlights layout
  qvhighlights/videos -> ../videos     (the reader's default video folder)
  classes.json                         class names, counts, head/tail split
  concepts.txt                         concept vocabulary, one per line
  DONE                                 written last: settings + summary

A folder without ``DONE`` is treated as half-rendered: its generated files are
removed and rendered again.

Cost (measured on this project's 2-core CPU machine): 300 clips take about 9 s
of one core (drawing ~45%, libx264 ~55%) and 5.4 MB on disk; ``workers`` spreads
clips over processes without changing the output (annotations are byte-identical;
the frames are identical before encoding, and libx264 here encodes them to the same
bytes except, rarely, under heavy CPU load, when its rounding differs slightly).

Command line (the ``t5video data synthetic`` subcommand calls :func:`main`)::

  t5video data synthetic --out /tmp/synth --num-videos 300 --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
from typing import Any, Optional, Sequence

import numpy as np

# Bump when the generator changes what it writes for a given seed; a folder
# rendered by another version is then not mistaken for a finished one.
# 4: honest side information (metadata and subtitles no longer state the key
# object or its action; ``side_information='oracle'`` keeps version 3's text).
GENERATOR_VERSION = 4

# What the non-visual annotation fields (subtitle, metadata) may know:
#   'honest' (default): like real side information, partial, noisy and mostly
#     about something else; never the action, rarely and only partly the object;
#   'oracle': version 3's text, which names the key object (colour, shape, size)
#     and paraphrases the action with the captions' own verbs. A leak, kept only
#     to show what the leakage guard catches (tests/test_side_information.py).
SIDE_INFORMATION = ("honest", "oracle")

SPLITS = ("train", "val", "test")

# ---------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross", "ring",
          "hexagon")
# Shapes that look the same at every rotation cannot show a spin.
_ROUND_SHAPES = ("circle", "ring")

SHAPE_WORDS = {
    "circle": ("circle", "disc", "dot"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
    "star": ("star",),
    "diamond": ("diamond", "rhombus"),
    "cross": ("cross", "plus sign"),
    "ring": ("ring", "hoop", "donut"),
    "hexagon": ("hexagon",),
}

# Saturated object colours (RGB); backgrounds are muted, so saturation alone
# separates objects from the scene.
COLOURS = {
    "red": (220, 35, 35),
    "green": (35, 185, 60),
    "blue": (40, 80, 235),
    "yellow": (240, 215, 30),
    "orange": (245, 135, 20),
    "purple": (145, 45, 200),
    "cyan": (25, 205, 225),
    "pink": (245, 105, 185),
}

COLOUR_WORDS = {
    "red": ("red", "crimson"),
    "green": ("green",),
    "blue": ("blue",),
    "yellow": ("yellow", "golden"),
    "orange": ("orange",),
    "purple": ("purple", "violet"),
    "cyan": ("cyan", "turquoise"),
    "pink": ("pink",),
}

# Object radius as a fraction of the frame's short side.
SIZES = {"small": 0.09, "medium": 0.13, "large": 0.17}
SIZE_WORDS = {
    "small": ("small", "little", "tiny"),
    "medium": ("medium-sized", "mid-sized"),
    "large": ("large", "big"),
}
# The size a caption mostly leaves unsaid (named in 30% of its noun phrases).
UNSTATED_SIZE = "medium"

BACKGROUNDS = ("plain", "gradient", "striped", "checkered", "noisy", "dotted")
BACKGROUND_WORDS = {
    "plain": ("plain", "flat", "uniform"),
    "gradient": ("gradient", "smoothly shaded", "fading"),
    "striped": ("striped", "stripy", "lined"),
    "checkered": ("checkered", "checkerboard", "chequered"),
    "noisy": ("noisy", "grainy", "speckled"),
    "dotted": ("dotted", "polka-dot", "spotted"),
}

# The atomic actions: which attribute of the key object each one changes.
ACTIONS = {
    "moves left": "x",
    "moves right": "x",
    "moves up": "y",
    "moves down": "y",
    "appears": "alpha",
    "disappears": "alpha",
    "grows": "scale",
    "shrinks": "scale",
    "spins": "angle",
    "changes colour": "colour",
}

ACTION_VERBS = {
    "moves left": ("moves to the left", "slides leftwards", "travels to the left",
                   "drifts left", "glides toward the left edge"),
    "moves right": ("moves to the right", "slides rightwards",
                    "travels to the right", "drifts right",
                    "glides toward the right edge"),
    "moves up": ("moves up", "rises", "floats upward", "climbs toward the top"),
    "moves down": ("moves down", "sinks", "drops downward",
                   "falls toward the bottom"),
    "appears": ("appears", "fades into view", "shows up", "becomes visible"),
    "disappears": ("disappears", "fades away", "vanishes", "fades out of view"),
    "grows": ("grows", "gets bigger", "expands", "grows larger"),
    "shrinks": ("shrinks", "gets smaller", "contracts", "becomes smaller"),
    "spins": ("spins {dir}", "rotates {dir}", "turns around", "twirls"),
    "changes colour": ("changes colour from {c0} to {c1}",
                       "turns from {c0} to {c1}", "changes color to {c1}",
                       "switches its colour to {c1}"),
}

# Action classes, head of the long tail first. Each is a tuple of actions that
# happen in this order.
CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("moves left", ("moves left",)),
    ("moves right", ("moves right",)),
    ("appears", ("appears",)),
    ("disappears", ("disappears",)),
    ("grows", ("grows",)),
    ("shrinks", ("shrinks",)),
    ("moves up", ("moves up",)),
    ("moves down", ("moves down",)),
    ("changes colour", ("changes colour",)),
    ("spins", ("spins",)),
    ("grows then shrinks", ("grows", "shrinks")),
    ("appears then moves right", ("appears", "moves right")),
    ("moves left then disappears", ("moves left", "disappears")),
    ("shrinks then grows", ("shrinks", "grows")),
    ("moves up then moves down", ("moves up", "moves down")),
    ("changes colour then moves up", ("changes colour", "moves up")),
)
CLASS_NAMES = tuple(name for name, _ in CLASSES)
_CLASS_ACTIONS = dict(CLASSES)

# Pairs of classes told apart only by the order of what happens.
ORDER_DEPENDENT_PAIRS = (
    ("moves left", "moves right"),
    ("moves up", "moves down"),
    ("appears", "disappears"),
    ("grows", "shrinks"),
    ("grows then shrinks", "shrinks then grows"),
)

# Words an imperfect speech recogniser confuses, for the noisy subtitle line.
_MISHEARD = {
    "red": "bed", "blue": "glue", "green": "screen", "yellow": "hello",
    "pink": "ink", "orange": "arrange", "purple": "people", "cyan": "sign",
    "circle": "cycle", "square": "chair", "triangle": "tangle", "star": "car",
    "diamond": "diamonds", "cross": "gloss", "ring": "wing", "hexagon": "hexagons",
    "left": "lift", "right": "write", "up": "cup", "down": "town",
    "grows": "rows", "shrinks": "drinks", "spins": "pins", "appears": "a pears",
    "disappears": "this appears", "colour": "collar", "moves": "movies",
    "background": "back round", "now": "know", "the": "a",
}
_FILLERS = ("um", "so", "uh", "okay", "like", "yeah")


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Settings of a rendered dataset (everything but the output folder).

  Attributes:
    num_videos: how many clips.
    seed: the seed everything derives from.
    splits: train/val/test fractions (stratified per class).
    min_seconds, max_seconds: clip length range.
    sizes: frame sizes to draw from, as ``(width, height)``; both even.
    fps_choices: frame rates to draw from.
    classes: restrict to these class names (None: all of :data:`CLASSES`).
    class_prior: 'zipf' (long-tailed, head first in :data:`CLASSES` order) or
      'uniform'.
    zipf_exponent: exponent ``s`` of the prior ``p_k ~ k**-s``.
    min_per_class: every class gets at least this many clips when
      ``num_videos >= min_per_class * num_classes``.
    crf: libx264 constant rate factor.
    backgrounds: draw backgrounds from these (None: all of :data:`BACKGROUNDS`);
      ``('plain',)`` gives an easier set for models trained from scratch.
    max_distractors: at most this many still distractor objects (0-2).
    side_information: 'honest' (default) or 'oracle' (subtitle and metadata
      name the object and the action: a leak; see :data:`SIDE_INFORMATION`).
  """
  num_videos: int
  seed: int
  splits: tuple[float, float, float] = (0.7, 0.15, 0.15)
  min_seconds: float = 2.0
  max_seconds: float = 4.0
  sizes: tuple[tuple[int, int], ...] = ((96, 72), (128, 96), (112, 112))
  fps_choices: tuple[int, ...] = (8, 10, 12)
  classes: Optional[tuple[str, ...]] = None
  class_prior: str = "zipf"
  zipf_exponent: float = 1.1
  min_per_class: int = 3
  crf: int = 23
  backgrounds: Optional[tuple[str, ...]] = None
  max_distractors: int = 2
  side_information: str = "honest"

  def validate(self) -> None:
    """Raises ValueError naming the bad setting."""
    if self.num_videos < 1:
      raise ValueError(f"num_videos must be >= 1, got {self.num_videos}")
    if len(self.splits) != 3 or min(self.splits) < 0 or sum(self.splits) <= 0:
      raise ValueError(f"splits must be three non-negative fractions, got {self.splits}")
    if self.splits[0] <= 0:
      raise ValueError(f"splits[0] (train) must be > 0, got {self.splits}")
    if not 0.5 <= self.min_seconds <= self.max_seconds:
      raise ValueError("need 0.5 <= min_seconds <= max_seconds, got "
                       f"{self.min_seconds}, {self.max_seconds}")
    if not self.sizes:
      raise ValueError("sizes is empty")
    for w, h in self.sizes:
      if w % 2 or h % 2 or w < 32 or h < 32:
        raise ValueError(f"frame size {(w, h)} must be even and at least 32x32 "
                         "(yuv420p needs even dimensions)")
    if not self.fps_choices or min(self.fps_choices) < 1:
      raise ValueError(f"fps_choices must be positive integers, got {self.fps_choices}")
    if self.class_prior not in ("zipf", "uniform"):
      raise ValueError(f"class_prior must be 'zipf' or 'uniform', got {self.class_prior!r}")
    for name in self.class_names():
      if name not in _CLASS_ACTIONS:
        raise ValueError(f"unknown class {name!r}; known: {list(CLASS_NAMES)}")
    for b in self.backgrounds or ():
      if b not in BACKGROUNDS:
        raise ValueError(f"unknown background {b!r}; known: {list(BACKGROUNDS)}")
    if self.backgrounds is not None and not self.backgrounds:
      raise ValueError("backgrounds is empty (None: all)")
    if not 0 <= self.max_distractors <= 2:
      raise ValueError(f"max_distractors must be in [0, 2], got {self.max_distractors}")
    if self.side_information not in SIDE_INFORMATION:
      raise ValueError(f"side_information must be one of {SIDE_INFORMATION}, "
                       f"got {self.side_information!r}")
    if not 0 <= self.crf <= 51:
      raise ValueError(f"crf must be in [0, 51], got {self.crf}")

  def class_names(self) -> tuple[str, ...]:
    return tuple(self.classes) if self.classes is not None else CLASS_NAMES

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["sizes"] = [list(s) for s in self.sizes]
    d["splits"] = list(self.splits)
    d["fps_choices"] = list(self.fps_choices)
    d["classes"] = list(self.class_names())
    d["generator_version"] = GENERATOR_VERSION
    # Settings added later appear only when changed, so older folders still match.
    if self.backgrounds is None:
      d.pop("backgrounds")
    else:
      d["backgrounds"] = list(self.backgrounds)
    if self.max_distractors == 2:
      d.pop("max_distractors")
    if self.side_information == "honest":
      d.pop("side_information")
    return d


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
  """One shape in the scene; position in [0, 1] of the usable frame area."""
  shape: str
  colour: str
  size: str
  x: float
  y: float
  angle: float


@dataclasses.dataclass(frozen=True)
class EventSpec:
  """The key object's attribute changes from ``value_from`` to ``value_to``.

  Times are seconds on the clip's frame grid; colour values are colour names.
  """
  action: str
  start: float
  end: float
  value_from: Any
  value_to: Any


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """Everything about one clip except its pixels (which :func:`render_clip` draws)."""
  index: int
  video_id: str
  label: str
  split: str
  width: int
  height: int
  fps: int
  num_frames: int
  background: str
  background_colours: tuple[tuple[int, int, int], tuple[int, int, int]]
  background_params: tuple[float, ...]
  key: ObjectSpec
  distractors: tuple[ObjectSpec, ...]
  events: tuple[EventSpec, ...]
  noise_sigma: float
  shaky: bool
  render_seed: int
  captions: tuple[str, ...]
  tags: tuple[str, ...]
  subtitle: str
  objects_text: str
  background_text: str
  queries: tuple[str, ...]
  annotator_jitter: tuple[int, ...]

  @property
  def duration(self) -> float:
    return self.num_frames / self.fps

  @property
  def path(self) -> str:
    return f"videos/{self.video_id}.mp4"

  def saliency(self) -> list[float]:
    """Per-second scores: 0.1 outside events rising to 1.0 when a whole second is inside one."""
    dur = self.duration
    out = []
    for i in range(int(math.ceil(dur - 1e-9))):
      lo, hi = float(i), min(i + 1.0, dur)
      cover = max((_overlap(lo, hi, e.start, e.end) for e in self.events), default=0.0)
      out.append(round(0.1 + 0.9 * cover / (hi - lo), 3))
    return out

  def metadata(self) -> dict[str, str]:
    """The clip's metadata fields (``objects``, ``background``; either may be '')."""
    return {"objects": self.objects_text, "background": self.background_text}

  def moments(self) -> list[dict[str, Any]]:
    return [{"start": round(e.start, 3), "end": round(e.end, 3), "query": q}
            for e, q in zip(self.events, self.queries)]


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
  return max(0.0, min(a1, b1) - max(a0, b0))


# ---------------------------------------------------------------------------
# Sampling the specs
# ---------------------------------------------------------------------------

def class_prior(cfg: SyntheticConfig) -> np.ndarray:
  """The prior over ``cfg.class_names()``, in that order."""
  k = len(cfg.class_names())
  if cfg.class_prior == "uniform":
    return np.full(k, 1.0 / k)
  p = np.arange(1, k + 1, dtype=np.float64) ** -cfg.zipf_exponent
  return p / p.sum()


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
  """Integer counts summing to ``total`` proportional to ``weights``."""
  raw = total * weights / weights.sum()
  counts = np.floor(raw).astype(np.int64)
  order = np.argsort(-(raw - counts), kind="stable")
  counts[order[: total - counts.sum()]] += 1
  return counts


def _class_counts(cfg: SyntheticConfig) -> np.ndarray:
  prior = class_prior(cfg)
  k = len(prior)
  floor = cfg.min_per_class if cfg.num_videos >= cfg.min_per_class * k else 0
  return floor + _largest_remainder(cfg.num_videos - floor * k, prior)


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
  """Train/val/test counts for one class: train gets at least one clip, and val
  and test get one each once the class has three clips (if their fraction > 0)."""
  counts = list(_largest_remainder(n, np.asarray(fractions, np.float64)))
  if n >= 1 and counts[0] == 0:
    donor = int(np.argmax(counts))
    counts[donor] -= 1
    counts[0] += 1
  if n >= 3:
    for j in (1, 2):
      if fractions[j] > 0 and counts[j] == 0:
        donor = int(np.argmax(counts))
        counts[donor] -= 1
        counts[j] += 1
  return counts


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
  return options[int(rng.integers(len(options)))]


def _article(phrase: str) -> str:
  """'a' or 'an' for the phrase's first word (by sound for the words used here)."""
  if phrase.startswith("uni"):
    return "a"
  return "an" if phrase[0] in "aeiou" else "a"


def _event_windows(rng: np.random.Generator, actions: Sequence[str], dur: float,
                   fps: int) -> list[tuple[float, float]]:
  """Start/end seconds for each action, placed symmetrically in time and
  snapped to the frame grid."""
  def length(action: str) -> float:
    if action in ("appears", "disappears", "changes colour"):
      return rng.uniform(0.15, 0.3) * dur
    if action == "spins":
      return rng.uniform(0.4, 0.6) * dur
    return rng.uniform(0.35, 0.55) * dur

  if len(actions) == 1:
    d = length(actions[0])
    centre = rng.uniform(0.1 * dur + d / 2, 0.9 * dur - d / 2)
    windows = [(centre - d / 2, centre + d / 2)]
  else:
    lens = [0.6 * length(a) for a in actions]
    gaps = [rng.uniform(0.05, 0.12) * dur for _ in actions[1:]]
    block = sum(lens) + sum(gaps)
    if block > 0.84 * dur:
      shrink = 0.84 * dur / block
      lens = [x * shrink for x in lens]
      gaps = [x * shrink for x in gaps]
      block = 0.84 * dur
    t = rng.uniform(0.08 * dur, 0.92 * dur - block)
    windows = []
    for i, d in enumerate(lens):
      windows.append((t, t + d))
      t += d + (gaps[i] if i < len(gaps) else 0.0)
  last = (round(dur * fps) - 1) / fps
  out = []
  for s, e in windows:
    s = round(s * fps) / fps
    e = max(round(e * fps) / fps, s + 2.0 / fps)
    out.append((s, min(e, last)))
  return out


def _key_events(rng: np.random.Generator, actions: Sequence[str],
                windows: Sequence[tuple[float, float]], colour: str,
                banned_colours: set[str]
                ) -> list[EventSpec]:
  """The events that change the key object, chained attribute by attribute."""
  state: dict[str, Any] = {}
  events = []
  for action, (s, e) in zip(actions, windows):
    attr = ACTIONS[action]
    cur = state.get(attr)
    if action in ("moves left", "moves up"):
      frm = cur if cur is not None else rng.uniform(0.7, 1.0)
      to = rng.uniform(0.0, 0.3)
    elif action in ("moves right", "moves down"):
      frm = cur if cur is not None else rng.uniform(0.0, 0.3)
      to = rng.uniform(0.7, 1.0)
    elif action == "appears":
      frm, to = 0.0, 1.0
    elif action == "disappears":
      frm, to = 1.0, 0.0
    elif action in ("grows", "shrinks"):
      small = rng.uniform(0.55, 0.75)
      big = small * rng.uniform(1.7, 2.1)
      if cur is not None:
        frm = cur
        to = cur * (big / small) if action == "grows" else cur * (small / big)
      else:
        frm, to = (small, big) if action == "grows" else (big, small)
    elif action == "spins":
      frm = cur if cur is not None else 0.0
      turn = rng.uniform(0.6, 1.4) * 2 * math.pi * _pick(rng, (-1.0, 1.0))
      to = frm + turn
    elif action == "changes colour":
      frm = cur if cur is not None else colour
      choices = [c for c in COLOURS if c != frm and c not in banned_colours]
      to = _pick(rng, choices)
    else:
      raise ValueError(f"unknown action {action!r}")
    state[attr] = to
    events.append(EventSpec(action, float(s), float(e),
                            frm if isinstance(frm, str) else float(frm),
                            to if isinstance(to, str) else float(to)))
  return events


def _verb(rng: np.random.Generator, ev: EventSpec) -> str:
  template = _pick(rng, ACTION_VERBS[ev.action])
  if ev.action == "spins":
    direction = "clockwise" if ev.value_to > ev.value_from else "counterclockwise"
    return template.format(dir=direction)
  if ev.action == "changes colour":
    return template.format(c0=ev.value_from, c1=ev.value_to)
  return template


def _noun_phrase(rng: np.random.Generator, obj: ObjectSpec, *, definite: bool,
                 with_size: bool) -> str:
  words = []
  if with_size and (obj.size != UNSTATED_SIZE or rng.random() < 0.3):
    words.append(_pick(rng, SIZE_WORDS[obj.size]))
  words.append(_pick(rng, COLOUR_WORDS[obj.colour]) if rng.random() < 0.3
               else obj.colour)
  words.append(_pick(rng, SHAPE_WORDS[obj.shape]) if rng.random() < 0.5
               else obj.shape)
  phrase = " ".join(words)
  return f"the {phrase}" if definite else f"{_article(phrase)} {phrase}"


def _names_size(events: Sequence[EventSpec]) -> bool:
  """Whether captions name the key object's size: a size word would be wrong for half of a
  grows/shrinks clip."""
  return not any(ACTIONS[e.action] == "scale" for e in events)


def key_attributes(spec: ClipSpec) -> dict[str, Any]:
  """What a caption of the clip is scored against (:mod:`t5video.evaluate.attributes`): the key
  object's shape, colour (before any change) and size (None where the captions name none), and
  its actions in order. Written to the generic layout's rows as ``attributes``."""
  return {"shape": spec.key.shape, "colour": spec.key.colour,
          "size": spec.key.size if _names_size(spec.events) else None,
          "actions": [e.action for e in spec.events]}


def _captions(rng: np.random.Generator, key: ObjectSpec, distractors: Sequence[ObjectSpec],
              events: Sequence[EventSpec], background: str) -> list[str]:
  """3-5 distinct paraphrases naming the key object, the action and (mostly) the scene."""
  sized = _names_size(events)
  n = int(rng.integers(3, 6))
  out: list[str] = []
  for attempt in range(200):
    subj = _noun_phrase(rng, key, definite=False, with_size=sized)
    bg = _pick(rng, BACKGROUND_WORDS[background])
    scene = ""
    if not out or rng.random() < 0.75:
      scene = _pick(rng, (" on {a} {bg} background", " in front of {a} {bg} backdrop",
                          " against {a} {bg} background", " over {a} {bg} background"))
      scene = scene.format(a=_article(bg), bg=bg)
    verbs = [_verb(rng, e) for e in events]
    if len(events) == 1:
      forms = ["{s} {v0}{scene}", "there is {s} that {v0}{scene}",
               "in this clip {s} {v0}{scene}", "we see {s} as it {v0}{scene}"]
      if scene:
        forms.append("{scene_lead}, {s} {v0}")
      if distractors:
        forms.append("{s} {v0}{scene} while {d} stays still")
    else:
      forms = ["first {s} {v0}, then it {v1}{scene}", "{s} {v0} and then {v1}{scene}",
               "{s} {v0} before it {v1}{scene}", "after {s} {v0}, it {v1}{scene}"]
      if scene:
        forms.append("{scene_lead}, {s} first {v0} and afterwards {v1}")
    form = _pick(rng, forms)
    d = (_noun_phrase(rng, _pick(rng, distractors), definite=False, with_size=True)
         if distractors else "")
    text = form.format(s=subj, scene=scene, scene_lead=scene.strip(), d=d,
                       v0=verbs[0], v1=verbs[-1])
    if text not in out:
      out.append(text)
    if len(out) == n:
      break
  return out


def _subtitle(rng: np.random.Generator, key: ObjectSpec, events: Sequence[EventSpec],
              background: str) -> str:
  """The oracle subtitle (version 3's): names the object and paraphrases the action
  with the captions' own verbs; some clips get misheard or unrelated words.

  Always drawn (from the clip's main stream), so the rest of the clip's spec does
  not depend on ``side_information``; only ``'oracle'`` keeps it.
  """
  if rng.random() < 0.1:
    return _pick(rng, ("let me adjust the camera real quick",
                       "okay is this thing recording",
                       "and that is all for this one"))
  thing = f"{key.colour} {key.shape}"
  verbs = " and then it ".join(_verb(rng, e) for e in events)
  line = _pick(rng, ("okay so here the {t} {v}", "look at the {t}, it {v}",
                     "now the {t} {v} on the {bg} background",
                     "watch how the {t} {v}")).format(t=thing, v=verbs, bg=background)
  words = line.split(" ")
  if rng.random() < 0.5:
    for _ in range(int(rng.integers(1, 3))):
      i = int(rng.integers(len(words)))
      bare = words[i].rstrip(",")
      words[i] = _MISHEARD.get(bare, _pick(rng, _FILLERS)) + words[i][len(bare):]
  return " ".join(words)


# Honest subtitles: what people say while filming is mostly about something
# else. Motion words appear in lines about other things, independently of the clip.
_OFF_TOPIC = (
    "okay is this thing recording", "let me adjust the camera real quick",
    "and that is all for this one", "we will do a few more of these today",
    "the light in here keeps changing", "can you hear me at the back",
    "i think the battery is almost empty", "that was take number {n}",
    "hold on my phone is ringing", "this one is for the project",
    "we recorded these last week", "give me a second to set up",
    "is the focus okay now", "we are almost done with this batch",
)
_VAGUE = (
    "look at this one", "watch what it does now", "here it goes", "see that",
    "keep your eyes on it", "and there it is", "what do you think happens next",
    "it is doing its thing again", "pay attention now", "okay here we go again",
)
_DISTRACTING = (
    "turn left at the end of the hall", "scroll down for the rest",
    "the volume goes up and down", "this song keeps growing on me",
    "my budget shrinks every year", "i will show you the right settings later",
    "it just appears to work", "the old camera disappears into a drawer",
    "prices went up again", "slow down a bit", "move the lamp to the right",
    "the fan spins too loud", "the screen changes colour when it gets warm",
    "pick it up on the left side",
)
_PARTIAL = ("i like the {w} one", "that {w} again", "is that a {w}", "another {w} i guess",
            "the {w} looks nice")


def _mishear(rng: np.random.Generator, line: str) -> str:
  """Half the lines get one or two words misheard or replaced by fillers."""
  words = line.split(" ")
  if rng.random() < 0.5:
    for _ in range(int(rng.integers(1, 3))):
      i = int(rng.integers(len(words)))
      bare = words[i].rstrip(",")
      words[i] = _MISHEARD.get(bare, _pick(rng, _FILLERS)) + words[i][len(bare):]
  return " ".join(words)


def _honest_subtitle(rng: np.random.Generator, key: ObjectSpec) -> str:
  """An ASR-like line that behaves like a real one: mostly off-topic or vague,
  motion words only in lines about other things, and in about one clip in ten a
  single word about the object (its colour or its shape, right 70% of the time)."""
  u = rng.random()
  if u < 0.40:
    line = _pick(rng, _OFF_TOPIC).format(n=int(rng.integers(2, 9)))
  elif u < 0.65:
    line = _pick(rng, _VAGUE)
  elif u < 0.90:
    line = _pick(rng, _DISTRACTING)
  else:
    if rng.random() < 0.5:
      word = key.colour if rng.random() < 0.7 else _pick(rng, list(COLOURS))
    else:
      word = key.shape if rng.random() < 0.7 else _pick(rng, SHAPES)
    line = _pick(rng, _PARTIAL).format(w=word)
  return _mishear(rng, line)


def _honest_metadata(rng: np.random.Generator, distractors: Sequence[ObjectSpec],
                     background: str) -> tuple[str, str]:
  """(objects, background) fields that behave like real metadata: often missing,
  sometimes stale (another scene's inventory), never the key object's
  description; the background is right about half the time."""
  u = rng.random()
  if u < 0.35:
    objects = ""
  elif u < 0.60:
    n = 1 + len(distractors)
    objects = f"{n} object" + ("s" if n > 1 else "")
  elif u < 0.85:
    # True but about something else: the still objects, by shape only.
    objects = ", ".join(o.shape for o in distractors)
  else:
    # Stale: an inventory copied from another recording.
    objects = ", ".join(f"{_pick(rng, list(COLOURS))} {_pick(rng, SHAPES)}"
                        for _ in range(int(rng.integers(1, 3))))
  v = rng.random()
  if v < 0.55:
    bg = background
  elif v < 0.75:
    bg = _pick(rng, [b for b in BACKGROUNDS if b != background])
  else:
    bg = ""
  return objects, bg


def _usable(spec_w: int, spec_h: int, radius_px: float) -> tuple[float, float, float, float]:
  """Pixel range of centres that keeps a disc of ``radius_px`` inside the frame."""
  mx = min(radius_px + 1.0, spec_w * 0.45)
  my = min(radius_px + 1.0, spec_h * 0.45)
  return mx, spec_w - mx, my, spec_h - my


def _to_pixels(u: float, v: float, w: int, h: int, radius_px: float) -> tuple[float, float]:
  x0, x1, y0, y1 = _usable(w, h, radius_px)
  return x0 + u * (x1 - x0), y0 + v * (y1 - y0)


def _track(spec: ClipSpec, times: np.ndarray) -> dict[str, np.ndarray]:
  """The key object's per-frame state: x, y (pixels), radius (pixels), angle,
  alpha, rgb [T, 3]."""
  key = spec.key
  short = min(spec.width, spec.height)
  base_r = SIZES[key.size] * short
  initial = {"x": key.x, "y": key.y, "scale": 1.0, "angle": key.angle,
             "alpha": 1.0, "colour": key.colour}
  # An attribute that an event changes starts where its first event starts.
  for ev in reversed(spec.events):
    initial[ACTIONS[ev.action]] = ev.value_from
  t = times.astype(np.float64)
  vals: dict[str, np.ndarray] = {}
  for attr in ("x", "y", "scale", "angle", "alpha"):
    cur = np.full(t.shape, float(initial[attr]))
    for ev in spec.events:
      if ACTIONS[ev.action] != attr:
        continue
      p = np.clip((t - ev.start) / max(ev.end - ev.start, 1e-6), 0.0, 1.0)
      p = p * p * (3 - 2 * p)  # smoothstep easing
      cur = np.where(t >= ev.start, ev.value_from + (ev.value_to - ev.value_from) * p, cur)
    vals[attr] = cur
  rgb = np.tile(np.asarray(COLOURS[initial["colour"]], np.float64), (len(t), 1))
  for ev in spec.events:
    if ev.action != "changes colour":
      continue
    p = np.clip((t - ev.start) / max(ev.end - ev.start, 1e-6), 0.0, 1.0)[:, None]
    c0 = np.asarray(COLOURS[ev.value_from], np.float64)
    c1 = np.asarray(COLOURS[ev.value_to], np.float64)
    rgb = np.where((t >= ev.start)[:, None], c0 + (c1 - c0) * p, rgb)
  radius = base_r * vals["scale"]
  max_r = float(base_r * max(vals["scale"].max(), 1.0))
  x0, x1, y0, y1 = _usable(spec.width, spec.height, max_r)
  return {"x": x0 + vals["x"] * (x1 - x0), "y": y0 + vals["y"] * (y1 - y0),
          "radius": radius, "angle": vals["angle"], "alpha": vals["alpha"], "rgb": rgb,
          "max_radius": np.full(t.shape, max_r)}


def _sample_clip(cfg: SyntheticConfig, index: int, label: str, split: str,
                 video_id: str) -> ClipSpec:
  rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1, index]))
  width, height = (int(v) for v in cfg.sizes[int(rng.integers(len(cfg.sizes)))])
  fps = int(cfg.fps_choices[int(rng.integers(len(cfg.fps_choices)))])
  seconds = rng.uniform(cfg.min_seconds, cfg.max_seconds)
  num_frames = max(int(round(seconds * fps)), 4)
  dur = num_frames / fps
  actions = _CLASS_ACTIONS[label]

  # Background: two muted tones and a texture.
  background = _pick(rng, cfg.backgrounds or BACKGROUNDS)
  grey = rng.uniform(70, 180)
  tint = rng.uniform(-22, 22, size=3)
  c0 = np.clip(grey + tint, 20, 235)
  c1 = np.clip(c0 + _pick(rng, (-1.0, 1.0)) * rng.uniform(30, 60) + rng.uniform(-8, 8, 3),
               20, 235)
  bg_colours = (tuple(int(v) for v in c0), tuple(int(v) for v in c1))
  bg_params = (float(rng.uniform(0, math.pi)), float(rng.uniform(7, 18)),
               float(rng.integers(1 << 30)))

  # The key object.
  shapes = [s for s in SHAPES if not ("spins" in actions and s in _ROUND_SHAPES)]
  shape = _pick(rng, shapes)
  colour = _pick(rng, list(COLOURS))
  size = _pick(rng, list(SIZES))
  key = ObjectSpec(shape, colour, size, float(rng.uniform(0.1, 0.9)),
                   float(rng.uniform(0.1, 0.9)), float(rng.uniform(-0.25, 0.25)))

  # Distractors first choose colours, so a colour change never lands on one.
  n_distractors = min(int(rng.choice(3, p=(0.3, 0.4, 0.3))), cfg.max_distractors)
  d_colours = [_pick(rng, [c for c in COLOURS if c != colour]) for _ in range(n_distractors)]
  windows = _event_windows(rng, actions, dur, fps)
  events = _key_events(rng, actions, windows, colour, set(d_colours))

  probe = ClipSpec(index, video_id, label, split, width, height, fps, num_frames,
                   background, bg_colours, bg_params, key, (), tuple(events), 0.0,
                   False, 0, (), (), "", "", "", (), ())
  track = _track(probe, np.arange(num_frames) / fps)
  short = min(width, height)
  distractors = []
  for dc in d_colours:
    d_shape = _pick(rng, [s for s in SHAPES if s != shape])
    d_size = _pick(rng, list(SIZES))
    d_r = SIZES[d_size] * short
    for _ in range(30):
      u, v = rng.uniform(0, 1, size=2)
      px, py = _to_pixels(u, v, width, height, d_r)
      clear = np.hypot(track["x"] - px, track["y"] - py) > (track["max_radius"] + d_r) * 1.15
      others = all(
          math.hypot(px - qx, py - qy) > (d_r + qr) * 1.15
          for qx, qy, qr in ((*_to_pixels(o.x, o.y, width, height, SIZES[o.size] * short),
                              SIZES[o.size] * short) for o in distractors))
      if clear.all() and others:
        distractors.append(ObjectSpec(d_shape, dc, d_size, float(u), float(v),
                                      float(rng.uniform(-0.25, 0.25))))
        break

  captions = _captions(rng, key, distractors, events, background)
  queries = []
  for ev in events:
    queries.append(f"{_noun_phrase(rng, key, definite=True, with_size=False)} {_verb(rng, ev)}")
  subtitle = _subtitle(rng, key, events, background)
  tags: list[str] = []
  for t in ([shape, colour] + [e.value_to for e in events if e.action == "changes colour"]
            + [o.shape for o in distractors] + [o.colour for o in distractors]
            + [background] + list(actions)):
    if t not in tags:
      tags.append(t)
  if cfg.side_information == "oracle":
    inventory = [f"{key.size} {key.colour} {key.shape}"] + [
        f"{o.size} {o.colour} {o.shape} (still)" for o in distractors]
    objects_text, background_text = ", ".join(inventory), background
  else:
    # Its own random stream, so that honest and oracle datasets of one seed have
    # the same pixels, captions and tags.
    side = np.random.default_rng(np.random.SeedSequence([cfg.seed, 2, index]))
    subtitle = _honest_subtitle(side, key)
    objects_text, background_text = _honest_metadata(side, distractors, background)
  n_clips = int(math.ceil(dur / 2.0 - 1e-9))
  jitter = tuple(int(v) for v in rng.integers(-1, 2, size=3 * n_clips * len(events)))
  return ClipSpec(
      index=index, video_id=video_id, label=label, split=split, width=width,
      height=height, fps=fps, num_frames=num_frames, background=background,
      background_colours=bg_colours, background_params=bg_params, key=key,
      distractors=tuple(distractors), events=tuple(events),
      noise_sigma=float(rng.uniform(2.0, 7.0)), shaky=bool(rng.random() < 0.25),
      render_seed=int(rng.integers(1 << 62)), captions=tuple(captions),
      tags=tuple(tags), subtitle=subtitle, objects_text=objects_text,
      background_text=background_text,
      queries=tuple(queries), annotator_jitter=jitter)


def sample_specs(num_videos: int, seed: int, **kwargs: Any) -> list[ClipSpec]:
  """Draws every clip's specification (labels, splits, scenes, text) without rendering.

  Args:
    num_videos: how many clips.
    seed: the dataset seed.
    **kwargs: any other :class:`SyntheticConfig` field.

  Returns:
    One :class:`ClipSpec` per clip, in video-id order.
  """
  cfg = SyntheticConfig(num_videos=num_videos, seed=seed, **_tuplify(kwargs))
  cfg.validate()
  return _sample_specs(cfg)


def _tuplify(kwargs: dict[str, Any]) -> dict[str, Any]:
  out = dict(kwargs)
  if "sizes" in out:
    out["sizes"] = tuple(tuple(int(v) for v in s) for s in out["sizes"])
  for k in ("splits", "fps_choices", "classes", "backgrounds"):
    if out.get(k) is not None:
      out[k] = tuple(out[k])
  return out


def _sample_specs(cfg: SyntheticConfig) -> list[ClipSpec]:
  names = cfg.class_names()
  rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0]))
  counts = _class_counts(cfg)
  labels = np.repeat(np.arange(len(names)), counts)
  rng.shuffle(labels)
  splits = np.empty(cfg.num_videos, dtype=object)
  for k in range(len(names)):
    where = np.flatnonzero(labels == k)
    rng.shuffle(where)
    n_tr, n_va, _ = _split_counts(len(where), cfg.splits)
    splits[where[:n_tr]] = "train"
    splits[where[n_tr:n_tr + n_va]] = "val"
    splits[where[n_tr + n_va:]] = "test"
  width = max(5, len(str(cfg.num_videos - 1)))
  return [_sample_clip(cfg, i, names[labels[i]], str(splits[i]), f"vid{i:0{width}d}")
          for i in range(cfg.num_videos)]


# ---------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------

def _background(spec: ClipSpec) -> np.ndarray:
  """The clip's static background, float32 [height, width, 3]."""
  h, w = spec.height, spec.width
  c0 = np.asarray(spec.background_colours[0], np.float32)
  c1 = np.asarray(spec.background_colours[1], np.float32)
  angle, period, tex_seed = spec.background_params
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  proj = xx * math.cos(angle) + yy * math.sin(angle)
  kind = spec.background
  if kind == "plain":
    mix = np.zeros((h, w), np.float32)
  elif kind == "gradient":
    mix = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1.0)
  elif kind == "striped":
    # Stripes at one of four orientations.
    a = round(angle / (math.pi / 4)) * (math.pi / 4)
    p = xx * math.cos(a) + yy * math.sin(a)
    mix = np.clip(np.sin(2 * math.pi * p / (2 * period)) * 3.0, -1, 1) * 0.5 + 0.5
  elif kind == "checkered":
    cell = max(int(period), 4)
    mix = ((xx // cell + yy // cell) % 2).astype(np.float32)
  elif kind == "noisy":
    rng = np.random.default_rng(int(tex_seed))
    gh, gw = h // 8 + 2, w // 8 + 2
    grid = rng.random((gh, gw), dtype=np.float32)
    gy, gx = yy / 8.0, xx / 8.0
    iy, ix = gy.astype(np.int64), gx.astype(np.int64)
    fy, fx = gy - iy, gx - ix
    mix = (grid[iy, ix] * (1 - fy) * (1 - fx) + grid[iy + 1, ix] * fy * (1 - fx)
           + grid[iy, ix + 1] * (1 - fy) * fx + grid[iy + 1, ix + 1] * fy * fx)
    mix = np.clip(mix + rng.normal(0, 0.08, size=(h, w)).astype(np.float32), 0, 1)
  elif kind == "dotted":
    spacing = max(period + 4.0, 8.0)
    dy = (yy % spacing) - spacing / 2
    dx = (xx % spacing) - spacing / 2
    mix = np.clip(spacing * 0.25 - np.hypot(dx, dy) + 0.5, 0, 1)
  else:
    raise ValueError(f"clip {spec.video_id}: unknown background {kind!r}")
  return c0 + (c1 - c0) * mix[..., None]  # [height, width, 3]


def _shape_inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Signed distance (in radius units, positive inside) to a unit-radius shape."""
  rho = np.hypot(u, v)
  if shape == "circle":
    return 1.0 - rho
  if shape == "ring":
    return np.minimum(1.0 - rho, rho - 0.55)
  if shape == "square":
    return 0.8 - np.maximum(np.abs(u), np.abs(v))
  if shape == "diamond":
    return (1.0 - (np.abs(u) + np.abs(v))) / math.sqrt(2)
  if shape == "cross":
    au, av = np.abs(u), np.abs(v)
    return np.maximum(np.minimum(0.3 - au, 0.95 - av), np.minimum(0.3 - av, 0.95 - au))
  phi = np.arctan2(v, u)
  if shape in ("triangle", "hexagon"):
    n, circum = (3, 1.15) if shape == "triangle" else (6, 1.0)
    sector = 2 * math.pi / n
    normal0 = -math.pi / 2 + math.pi / n  # a vertex points up (image y grows down)
    delta = np.mod(phi - normal0 + sector / 2, sector) - sector / 2
    return circum * math.cos(math.pi / n) - rho * np.cos(delta)
  if shape == "star":
    sector = 2 * math.pi / 5
    delta = np.abs(np.mod(phi + math.pi / 2 + sector / 2, sector) - sector / 2)
    px, py = rho * np.cos(delta), rho * np.sin(delta)
    # The edge runs from the tip (1, 0) to the inner corner at angle pi/5.
    inner = 0.45
    ex, ey = inner * math.cos(sector / 2) - 1.0, inner * math.sin(sector / 2)
    nx, ny = -ey, ex  # normal pointing toward the centre
    norm = math.hypot(nx, ny)
    if nx * -1.0 < 0:
      nx, ny = -nx, -ny
    return ((px - 1.0) * nx + py * ny) / norm
  raise ValueError(f"unknown shape {shape!r}")


def _draw(canvas: np.ndarray, shape: str, cx: float, cy: float, radius: float,
          angle: float, rgb: np.ndarray, alpha: float) -> None:
  """Alpha-blends an anti-aliased shape into ``canvas`` [H, W, 3] in place."""
  if alpha <= 1e-3 or radius < 0.5:
    return
  h, w = canvas.shape[:2]
  reach = radius * 1.2 + 1
  x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, w)
  y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, h)
  if x0 >= x1 or y0 >= y1:
    return
  yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
  du, dv = (xx + 0.5 - cx) / radius, (yy + 0.5 - cy) / radius
  ca, sa = math.cos(angle), math.sin(angle)
  u = du * ca + dv * sa  # object frame; angle grows clockwise on screen
  v = -du * sa + dv * ca
  cover = np.clip(_shape_inside(shape, u, v) * radius + 0.5, 0.0, 1.0) * alpha
  patch = canvas[y0:y1, x0:x1]
  patch += (rgb.astype(np.float32) - patch) * cover[..., None]


def render_frames(spec: ClipSpec) -> np.ndarray:
  """Draws a clip: uint8 [num_frames, height, width, 3]."""
  rng = np.random.default_rng(spec.render_seed)
  bg = _background(spec)
  times = np.arange(spec.num_frames) / spec.fps
  track = _track(spec, times)
  short = min(spec.width, spec.height)
  still = np.array(bg)
  for o in spec.distractors:
    r = SIZES[o.size] * short
    px, py = _to_pixels(o.x, o.y, spec.width, spec.height, r)
    _draw(still, o.shape, px, py, r, o.angle, np.asarray(COLOURS[o.colour]), 1.0)
  clip = np.repeat(still[None], spec.num_frames, axis=0)  # [T, H, W, 3]
  for i in range(spec.num_frames):
    _draw(clip[i], spec.key.shape, float(track["x"][i]), float(track["y"][i]),
          float(track["radius"][i]), float(track["angle"][i]), track["rgb"][i],
          float(track["alpha"][i]))
  # Camera: sensor noise, brightness flicker, and for some clips a 1-pixel shake.
  noise = rng.standard_normal(clip.shape, dtype=np.float32)
  noise *= np.float32(spec.noise_sigma)
  clip += noise
  clip += rng.normal(0.0, 2.0, size=(spec.num_frames, 1, 1, 1)).astype(np.float32)
  if spec.shaky:
    shifts = rng.integers(-1, 2, size=(spec.num_frames, 2))
    for i in range(spec.num_frames):
      clip[i] = np.roll(clip[i], (int(shifts[i, 0]), int(shifts[i, 1])), axis=(0, 1))
  np.clip(clip, 0, 255, out=clip)
  clip += 0.5
  return clip.astype(np.uint8)


# BT.601 limited range: rows give Y, Cb, Cr from R, G, B in [0, 255].
_YCBCR = np.array([[65.481, 128.553, 24.966],
                   [-37.797, -74.203, 112.0],
                   [112.0, -93.786, -18.214]], np.float32) / 255.0


def rgb_to_yuv420p(frames: np.ndarray) -> np.ndarray:
  """uint8 RGB [..., H, W, 3] -> planar yuv420p uint8 [..., H * 3 / 2, W].

  Done in numpy rather than by PyAV's automatic reformat so that the encoder's
  input depends only on the frames (2x2 chroma averaging, rounding to nearest).
  """
  *lead, h, w, _ = frames.shape
  ycc = frames.astype(np.float32) @ _YCBCR.T  # [..., H, W, 3]
  ycc += np.array([16.0, 128.0, 128.0], np.float32)
  chroma = (ycc[..., 0::2, 0::2, 1:] + ycc[..., 1::2, 0::2, 1:]
            + ycc[..., 0::2, 1::2, 1:] + ycc[..., 1::2, 1::2, 1:]) * 0.25  # [..., H/2, W/2, 2]
  out = np.empty((*lead, h * 3 // 2, w), np.float32)
  out[..., :h, :] = ycc[..., 0]
  quarter = (h // 2) * (w // 2)
  # Cb then Cr planes, each [H/2, W/2] laid out row-major after the Y plane.
  cbcr = np.moveaxis(chroma, -1, -3).reshape(*lead, 2 * quarter)  # [..., 2 * H/2 * W/2]
  out[..., h:, :] = cbcr.reshape(*lead, h // 2, w)  # [..., H/2, W] = both planes
  np.clip(out, 0, 255, out=out)
  out += 0.5
  return out.astype(np.uint8)


def write_mp4(path: str, frames: np.ndarray, fps: int, *, crf: int = 23) -> None:
  """Encodes uint8 [T, H, W, 3] RGB frames as H.264 (libx264, yuv420p) mp4.

  Single-threaded x264 without B-frames and our own colour conversion, so the
  bytes depend only on the frames; writes to a temporary name and renames, so a killed run
  leaves no partial file under the final name.
  """
  import av  # imported here: sampling specs needs no video library

  t, h, w, _ = frames.shape
  if h % 2 or w % 2:
    raise ValueError(f"{path}: frame size {w}x{h} must be even for yuv420p")
  tmp = path + ".part"
  with av.open(tmp, mode="w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    # No B-frames: with them, this libx264 build gave different bytes for the
    # same input from one encode to the next (measured: 4 of 16 clips over 6
    # encodes each); without them, 0 of 32. Keyframes every 2 s for seeking.
    # Threading off everywhere (the codec context's own thread_count defaults to
    # auto and overrides the "threads" option): threaded x264 under CPU load gave
    # different bytes for the same frames now and then.
    stream.codec_context.thread_count = 1
    stream.codec_context.thread_type = "NONE"
    stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1",
                      "bf": "0", "g": str(2 * fps),
                      "x264-params": "threads=1:lookahead-threads=1:sliced-threads=0"}
    planes = rgb_to_yuv420p(frames)  # [T, H * 3 / 2, W]
    for i in range(t):
      frame = av.VideoFrame.from_ndarray(planes[i], format="yuv420p")
      frame.pts = i
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  os.replace(tmp, path)


def render_clip(spec: ClipSpec, out_dir: str, crf: int = 23) -> int:
  """Renders and encodes one clip under ``out_dir``; returns the file's size in bytes."""
  path = os.path.join(out_dir, spec.path)
  write_mp4(path, render_frames(spec), spec.fps, crf=crf)
  return os.path.getsize(path)


def _render_job(job: tuple[ClipSpec, str, int]) -> int:
  return render_clip(*job)


# ---------------------------------------------------------------------------
# Annotation layouts
# ---------------------------------------------------------------------------

def _generic_row(spec: ClipSpec) -> dict[str, Any]:
  return {
      "video_id": spec.video_id,
      "path": spec.path,
      "captions": list(spec.captions),
      "label": spec.label,
      "tags": list(spec.tags),
      "split": spec.split,
      "duration": round(spec.duration, 6),
      "subtitle": spec.subtitle,
      "metadata": spec.metadata(),
      "moments": spec.moments(),
      "saliency": spec.saliency(),
      "fps": spec.fps,
      "width": spec.width,
      "height": spec.height,
      "num_frames": spec.num_frames,
      "attributes": key_attributes(spec),
  }


def _msrvtt(specs: Sequence[ClipSpec], names: Sequence[str], seed: int
            ) -> tuple[dict[str, Any], dict[str, Any]]:
  """(train_val, test) documents with the published MSR-VTT keys."""
  index = {n: i for i, n in enumerate(names)}
  info = {"contributor": "t5video synthetic generator", "data_created": "",
          "version": f"synthetic-{GENERATOR_VERSION}",
          "description": f"Rendered by t5video.data.synthetic with seed {seed}.",
          "year": ""}
  docs = {"trainval": {"info": info, "videos": [], "sentences": []},
          "test": {"info": info, "videos": [], "sentences": []}}
  sen_id = 0
  for s in specs:
    doc = docs["test" if s.split == "test" else "trainval"]
    doc["videos"].append({
        "category": index[s.label], "url": f"synthetic://seed{seed}/{s.video_id}",
        "video_id": s.video_id, "start time": 0.0, "end time": round(s.duration, 6),
        "split": {"train": "train", "val": "validate", "test": "test"}[s.split],
        "id": s.index})
    for c in s.captions:
      doc["sentences"].append({"caption": c, "video_id": s.video_id, "sen_id": sen_id})
      sen_id += 1
  return docs["trainval"], docs["test"]


def _qvhighlights_rows(spec: ClipSpec) -> list[dict[str, Any]]:
  """One QVHighlights query per event; 2-second clips, 3 annotators scoring 0-4."""
  rows = []
  dur = spec.duration
  n_clips = int(math.ceil(dur / 2.0 - 1e-9))
  jitter = iter(spec.annotator_jitter)
  for k, (ev, query) in enumerate(zip(spec.events, spec.queries)):
    clip_ids, scores = [], []
    for c in range(n_clips):
      lo, hi = 2.0 * c, min(2.0 * c + 2.0, dur)
      cover = _overlap(lo, hi, ev.start, ev.end) / (hi - lo)
      j = [next(jitter) for _ in range(3)]
      if cover <= 1e-6:
        continue
      base = 1 + int(round(3 * cover))
      clip_ids.append(c)
      scores.append([int(min(max(base + d, 0), 4)) for d in j])
    rows.append({"qid": spec.index * 4 + k, "query": query, "vid": spec.video_id,
                 "duration": round(dur, 6),
                 "relevant_windows": [[round(ev.start, 3), round(ev.end, 3)]],
                 "relevant_clip_ids": clip_ids, "saliency_scores": scores})
  return rows


def concepts() -> list[str]:
  """The concept vocabulary (objects, colours, attributes, actions)."""
  out: list[str] = []
  groups = (list(SHAPES), list(COLOURS), list(SIZES), list(BACKGROUNDS),
            [f"{b} background" for b in BACKGROUNDS], list(ACTIONS),
            ["still", "clockwise", "counterclockwise"])
  for group in groups:
    for c in group:
      if c not in out:
        out.append(c)
  return out


def _classes_doc(specs: Sequence[ClipSpec], cfg: SyntheticConfig) -> dict[str, Any]:
  names = cfg.class_names()
  prior = class_prior(cfg)
  per: dict[str, dict[str, int]] = {n: {s: 0 for s in SPLITS} for n in names}
  for s in specs:
    per[s.label][s.split] += 1
  n = len(specs)
  # Head: classes at or above the uniform share; tail: the rest.
  rows = []
  for i, name in enumerate(names):
    total = sum(per[name].values())
    rows.append({"name": name, "index": i, "actions": list(_CLASS_ACTIONS[name]),
                 "count": total, "fraction": round(total / n, 6),
                 "prior": round(float(prior[i]), 6),
                 "group": "head" if total * len(names) >= n else "tail",
                 "splits": per[name]})
  pairs = [list(p) for p in ORDER_DEPENDENT_PAIRS if p[0] in names and p[1] in names]
  return {"classes": rows,
          "head": [r["name"] for r in rows if r["group"] == "head"],
          "tail": [r["name"] for r in rows if r["group"] == "tail"],
          "order_dependent_pairs": pairs,
          "class_prior": cfg.class_prior, "zipf_exponent": cfg.zipf_exponent}


def _summary(specs: Sequence[ClipSpec], cfg: SyntheticConfig) -> dict[str, Any]:
  per_split = {s: 0 for s in SPLITS}
  per_class = {n: {s: 0 for s in SPLITS} for n in cfg.class_names()}
  for s in specs:
    per_split[s.split] += 1
    per_class[s.label][s.split] += 1
  return {"num_videos": len(specs), "seed": cfg.seed, "splits": per_split,
          "classes": per_class}


def _write_text(path: str, text: str) -> None:
  tmp = path + ".part"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def _dump(obj: Any) -> str:
  return json.dumps(obj, ensure_ascii=False)


def _link(target: str, link: str) -> None:
  """A relative symlink (a hard link where symlinks are not allowed)."""
  if os.path.lexists(link):
    os.remove(link)
  try:
    os.symlink(os.path.relpath(target, os.path.dirname(link)), link)
  except OSError:
    os.link(target, link)


def _complete(out_dir: str, summary: dict[str, Any]) -> bool:
  """Whether a folder marked DONE still holds every file it was rendered with."""
  for name in ("annotations.jsonl", "classes.json", "concepts.txt"):
    if not os.path.isfile(os.path.join(out_dir, name)):
      return False
  videos = os.path.join(out_dir, "videos")
  if not os.path.isdir(videos):
    return False
  n = sum(1 for f in os.listdir(videos) if f.endswith(".mp4"))
  return n == summary.get("num_videos")


# Everything render_dataset writes; a half-rendered folder loses exactly these.
_OUTPUTS = ("videos", "msrvtt", "qvhighlights", "annotations.jsonl", "classes.json",
            "concepts.txt", "DONE")


def render_dataset(out_dir: str, num_videos: int, seed: int, *,
                   splits: Sequence[float] = (0.7, 0.15, 0.15),
                   min_seconds: float = 2.0, max_seconds: float = 4.0,
                   sizes: Sequence[Sequence[int]] = ((96, 72), (128, 96), (112, 112)),
                   fps_choices: Sequence[int] = (8, 10, 12), workers: int = 1,
                   classes: Optional[Sequence[str]] = None,
                   class_prior: str = "zipf", backgrounds: Optional[Sequence[str]] = None,
                   max_distractors: int = 2, side_information: str = "honest",
                   overwrite: bool = False, verbose: bool = False,
                   settings_only: bool = False) -> dict[str, Any]:
  """Renders the synthetic dataset into ``out_dir`` (see the module docstring).

  A folder whose ``DONE`` records the same settings (and whose videos and
  annotation files are all there) is left as it is; one without ``DONE``
  (half-rendered) or missing files has its generated files removed and is
  rendered again; one rendered with other settings is an error unless
  ``overwrite``.

  Args:
    out_dir: the output folder (created if needed).
    num_videos: how many clips.
    seed: everything derives from it.
    splits: train/val/test fractions, stratified per class.
    min_seconds, max_seconds: clip length range.
    sizes: frame sizes ``(width, height)`` to draw from; even.
    fps_choices: frame rates to draw from.
    workers: processes for rendering (1: in this process).
    classes: restrict to these class names (None: all).
    class_prior: 'zipf' (long-tailed) or 'uniform'.
    backgrounds: draw from these backgrounds only (None: all).
    max_distractors: at most this many still distractors (0-2).
    side_information: 'honest' (default) or 'oracle' (subtitle and metadata
      state the object and the action; a leak, for the leakage guard only).
    overwrite: replace a folder rendered with other settings.
    verbose: print progress.
    settings_only: render nothing; return the settings as ``DONE`` records them.

  Returns:
    A summary: ``num_videos``, ``seed``, clips per split, per class and split,
    ``rendered`` (False when a finished folder was reused) and ``seconds``
    (with ``settings_only``, the settings instead).
  """
  t0 = time.perf_counter()
  cfg = SyntheticConfig(**_tuplify(dict(
      num_videos=num_videos, seed=seed, splits=splits, min_seconds=min_seconds,
      max_seconds=max_seconds, sizes=sizes, fps_choices=fps_choices,
      classes=classes, class_prior=class_prior, backgrounds=backgrounds,
      max_distractors=max_distractors, side_information=side_information)))
  cfg.validate()
  config_json = cfg.to_json()
  if settings_only:
    return config_json
  done_path = os.path.join(out_dir, "DONE")
  if os.path.exists(done_path):
    try:
      with open(done_path, encoding="utf-8") as f:
        done = json.load(f)
      previous = done["config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{done_path}: unreadable marker ({e}); delete it to re-render") from e
    if previous == config_json and _complete(out_dir, done["summary"]):
      return dict(done["summary"], rendered=False,
                  seconds=round(time.perf_counter() - t0, 3))
    if previous != config_json and not overwrite:
      differ = sorted(k for k in set(previous) | set(config_json)
                      if previous.get(k) != config_json.get(k))
      raise ValueError(f"{done_path}: {out_dir} holds a synthetic dataset rendered with "
                       f"other settings (differing: {', '.join(differ)}); pass "
                       "overwrite=True (--overwrite) or choose another folder")
  for name in _OUTPUTS:
    p = os.path.join(out_dir, name)
    if os.path.isdir(p) and not os.path.islink(p):
      shutil.rmtree(p)
    elif os.path.lexists(p):
      os.remove(p)

  specs = _sample_specs(cfg)
  os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
  jobs = [(s, out_dir, cfg.crf) for s in specs]
  if workers > 1:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
      for done_n, _ in enumerate(pool.imap_unordered(_render_job, jobs, chunksize=4), 1):
        if verbose and done_n % 50 == 0:
          print(f"rendered {done_n}/{len(jobs)} clips", flush=True)
  else:
    for done_n, job in enumerate(jobs, 1):
      _render_job(job)
      if verbose and done_n % 50 == 0:
        print(f"rendered {done_n}/{len(jobs)} clips", flush=True)

  _write_text(os.path.join(out_dir, "annotations.jsonl"),
              "".join(_dump(_generic_row(s)) + "\n" for s in specs))

  msr = os.path.join(out_dir, "msrvtt")
  for sub in ("TrainValVideo", "TestVideo"):
    os.makedirs(os.path.join(msr, sub), exist_ok=True)
  trainval, test = _msrvtt(specs, cfg.class_names(), seed)
  _write_text(os.path.join(msr, "train_val_videodatainfo.json"), _dump(trainval))
  _write_text(os.path.join(msr, "test_videodatainfo.json"), _dump(test))
  for s in specs:
    sub = "TestVideo" if s.split == "test" else "TrainValVideo"
    _link(os.path.join(out_dir, s.path), os.path.join(msr, sub, f"{s.video_id}.mp4"))

  qvh = os.path.join(out_dir, "qvhighlights")
  os.makedirs(qvh, exist_ok=True)
  for split in SPLITS:
    rows = [r for s in specs if s.split == split for r in _qvhighlights_rows(s)]
    _write_text(os.path.join(qvh, f"highlight_{split}_release.jsonl"),
                "".join(_dump(r) + "\n" for r in rows))
  os.symlink(os.path.join("..", "videos"), os.path.join(qvh, "videos"))

  _write_text(os.path.join(out_dir, "classes.json"), _dump(_classes_doc(specs, cfg)))
  _write_text(os.path.join(out_dir, "concepts.txt"), "\n".join(concepts()) + "\n")
  summary = _summary(specs, cfg)
  _write_text(done_path, _dump({"config": config_json, "summary": summary}))
  return dict(summary, rendered=True, seconds=round(time.perf_counter() - t0, 3))


def main(argv: Optional[Sequence[str]] = None) -> int:
  """``t5video data synthetic --out DIR --num-videos N --seed S [--workers W]``."""
  parser = argparse.ArgumentParser(
      prog="t5video data synthetic",
      description="Render the synthetic video dataset (H.264 mp4 + annotations).")
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--num-videos", type=int, default=300)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workers", type=int, default=1)
  parser.add_argument("--min-seconds", type=float, default=2.0)
  parser.add_argument("--max-seconds", type=float, default=4.0)
  parser.add_argument("--class-prior", choices=("zipf", "uniform"), default="zipf")
  parser.add_argument("--side-information", choices=SIDE_INFORMATION, default="honest",
                      help="'oracle' writes subtitles and metadata that state the answer "
                      "(a leak; only to test leakage guards)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace a folder rendered with other settings")
  args = parser.parse_args(list(argv) if argv is not None else sys.argv[1:])
  try:
    summary = render_dataset(args.out, args.num_videos, args.seed,
                             min_seconds=args.min_seconds, max_seconds=args.max_seconds,
                             workers=args.workers, class_prior=args.class_prior,
                             side_information=args.side_information, overwrite=args.overwrite, verbose=True)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  state = "rendered" if summary["rendered"] else "already complete"
  print(f"{args.out}: {state}, {summary['num_videos']} clips "
        f"(train {summary['splits']['train']}, val {summary['splits']['val']}, "
        f"test {summary['splits']['test']}) in {summary['seconds']:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
