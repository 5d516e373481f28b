"""The distillation recipe's config schema: every key with its default, and its checks.

A distill config is a ViFi-CLIP config (the student: ``model``, ``data``,
``eval``, the engine's sections; :mod:`t5video.recipes.vificlip.config`) plus
three sections of its own:

* ``student``: what the student trains on (``sources``) and how the training
  split of ``data`` is divided into a small labelled set and a large
  unlabelled one;
* ``teacher``: the CaptionT5 captioner that writes the pseudo-captions, a
  finished workdir or the stages that train it here (adaptation order);
* ``pseudo``: pseudo-labelling settings (captions per clip, nucleus sampling,
  batching) and where the pseudo-labelled dataset is.
"""

from __future__ import annotations

import ml_collections

from t5video.recipes.vificlip import config as vificlip_config

# What the student may train on (student.sources), combined by concatenation:
#   'pseudo':   the unlabelled clips with the teacher's K sampled captions;
#   'labelled': the labelled clips with their human captions;
#   'alt_text': every training clip (labelled and unlabelled) with its noisy alt-text.
SOURCES = ("pseudo", "labelled", "alt_text")

# The teacher's adaptation order (teacher.order):
#   'vl':    visual adaptation (T5 frozen), then language adaptation (vision frozen): the paper's;
#   'lv':    the other way round (the paper's ablation);
#   'joint': one stage, everything trains (a teacher from scratch, smoke tests).
ORDERS = ("vl", "lv", "joint")

# Params of each adaptation stage of a CaptionT5 teacher (regexes over '/'-joined names).
VISUAL_PARAMS = r"^(clip|temporal|visual_projection|visual_norm|video_token_projection|video_token_norm)/"
LANGUAGE_PARAMS = r"^t5/"

OPEN_SECTIONS = vificlip_config.OPEN_SECTIONS + ("teacher.overrides", "teacher.visual_overrides",
                                                  "teacher.language_overrides")


def base_config() -> ml_collections.ConfigDict:
  """Every key of a distill config with its default (the student's ViFi-CLIP sections included)."""
  c = vificlip_config.base_config()
  c.task = "distill"
  c.model.objective = "contrastive"
  c.data.novel_classes = ("*",)     # zero-shot classification over every class of eval.split
  c.eval.protocols = ("zero_shot", "retrieval")
  c.student = ml_collections.ConfigDict(dict(
      sources=("pseudo",),          # see SOURCES
      labelled_fraction=0.1,        # the labelled share of data.train_split (seeded); the rest is
                                    # the unlabelled set (its captions, labels and tags dropped)
      split_seed=0,                 # the seed of that division (fixed across training seeds)
      unlabelled="",                # '' = the rest of data.train_split; else the unlabelled videos: a
                                    # generic-layout annotation file (.jsonl/.csv) or a folder of videos
      data_dir="",                  # where the division is written ('' = <workdir>/data)
      clip_init="",                 # an HF CLIP directory the student starts from: its sizes, its
                                    # tokenizer and both towers' weights ('' = from scratch)
  ))
  c.teacher = ml_collections.ConfigDict(dict(
      workdir="",                   # a finished CaptionT5 workdir; '' = trained here, in stages
      config="",                    # the CaptionT5 config file[:arg] those stages start from
      order="vl",                   # see ORDERS
      visual_steps=0,               # steps of the visual adaptation stage (0: the config's)
      language_steps=0,             # steps of the language adaptation stage (0: the config's)
      qa_weight=0.5,                # weight of the 'qa' task (video QA as text) in language adaptation
                                    # (and in a joint stage); visual adaptation trains captions only
      overrides={},                 # more overrides of the teacher's config (nested dicts), every stage
      visual_overrides={},          # ... of the visual adaptation stage only
      language_overrides={},        # ... of the language adaptation (or joint) stage only
  ))
  # The project's stand-ins for pretrained CLIP and T5 (t5video.recipes.standins): with ``dir`` set,
  # they are built there (from ``config``, cached) if absent, and the student starts from
  # <dir>/clip, the teacher from <dir>/clip and <dir>/t5, through the HF-directory path.
  c.standins = ml_collections.ConfigDict(dict(dir="", config="configs/standins/default.py"))
  c.pseudo = ml_collections.ConfigDict(dict(
      dir="",                       # a pseudo-labelled dataset; '' = <workdir>/pseudo_label, made here
      num_captions=4,               # K nucleus-sampled captions per clip
      top_p=0.9,
      temperature=1.0,
      seed=0,                       # with each clip's id, the key its captions are drawn with
      batch_size=16,
      chunk_size=64,                # clips per resumable part (a finished part is never redone)
      max_clips=0,                  # label at most this many unlabelled clips (0: all)
  ))
  return c


def validate(config: ml_collections.ConfigDict) -> None:
  """Value checks beyond the schema's types (the student's ViFi-CLIP checks included)."""
  vificlip_config.validate(config)
  s, t, p = config.student, config.teacher, config.pseudo
  if not s.sources or any(x not in SOURCES for x in s.sources):
    raise ValueError(f"student.sources must be a non-empty subset of {SOURCES}, got {tuple(s.sources)}")
  if not 0.0 < float(s.labelled_fraction) <= 1.0:
    raise ValueError(f"student.labelled_fraction must be in (0, 1], got {s.labelled_fraction}")
  if not 0.0 <= float(t.qa_weight) < 1.0:
    raise ValueError(f"teacher.qa_weight must be in [0, 1), got {t.qa_weight}")
  if t.order not in ORDERS:
    raise ValueError(f"teacher.order must be one of {ORDERS}, got {t.order!r}")
  if "pseudo" in s.sources and not (p.dir or t.workdir or t.config):
    raise ValueError("student.sources has 'pseudo': set pseudo.dir (a pseudo-labelled dataset), "
                     "teacher.workdir (a trained CaptionT5 run) or teacher.config (train one here)")
  if p.num_captions < 1 or p.batch_size < 1 or p.chunk_size < 1 or p.max_clips < 0:
    raise ValueError("pseudo: num_captions, batch_size and chunk_size must be >= 1 and max_clips >= 0, got "
                     f"{p.num_captions}, {p.batch_size}, {p.chunk_size}, {p.max_clips}")
  if not 0.0 < float(p.top_p) <= 1.0 or not float(p.temperature) > 0.0:
    raise ValueError(f"pseudo.top_p must be in (0, 1] and pseudo.temperature > 0, got {p.top_p}, "
                     f"{p.temperature}")
  if config.model.objective != "contrastive":
    raise ValueError("model.objective must be 'contrastive' (the student learns from captions alone), "
                     f"got {config.model.objective!r}")
