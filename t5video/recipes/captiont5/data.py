"""CaptionT5's data: the dataset folder (rendered when synthetic), records of a
split, the per-example text transform (task, thoughts, tokens), the tokenizer,
cached features and the CLIP-guided concept thoughts.

What one training example is:

* frames: ``T`` frames of the clip (segment-sampled in training, uniform in
  evaluation), uint8, normalised inside the jitted step;
* a task drawn per example from ``config.tasks`` (weights): ``caption``,
  ``classify``, ``tags`` or ``qa`` (one of the clip's QA pairs, :mod:`t5video.data.qa`);
* the encoder text: the task prompt, then the thoughts
  (:mod:`t5video.data.thoughts`: concepts, metadata, subtitle, draft; thought
  dropout in training);
* the decoder target: a reference caption (one drawn at random), the class
  name, the sorted tags, or the answer.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import re
from typing import Optional, Sequence

from absl import logging
import ml_collections
import numpy as np

from t5video.data import decode as decode_lib
from t5video.data import layouts
from t5video.data import pipeline
from t5video.data import qa as qa_lib
from t5video.data import thoughts as thoughts_lib
from t5video.data import tokenizer as tokenizer_lib
from t5video.data.records import VideoRecord, fold_of
from t5video.models import t5 as t5_lib
from t5video.recipes.captiont5 import concepts as concepts_lib
from t5video.recipes.captiont5 import config as cfg
from t5video.train import paths

TASK_IDS = {"caption": 0, "classify": 1, "tags": 2, "qa": 3}

# Where a run trains its video-text CLIP stage: <workdir>/vificlip (<workdir>/vificlip_fold<k> when
# cross-fitted), unless thoughts.clip_workdir names a finished one.
CLIP_STAGE_DIR = "vificlip"

# Words never used as concepts when the vocabulary comes from the captions.
FUNCTION_WORDS = frozenset("""
a an the and or but of to in on at by for with from into onto over under as is are was were be
been being it its it's this that these those there here then than so very just also while when where
which who whom whose what how why not no yes can could will would should may might must do does did
has have had having he she they them their his her him we you your our i me my one two some any all
each every more most other such only own same too out off about above below after before again once
""".split())



def data_root(data: ml_collections.ConfigDict) -> str:
  """The dataset folder (absolute); an error naming ``data.root`` when it is empty."""
  if not data.root:
    raise ValueError(f"config.data.root is empty: pass --config.data.root=DIR (the {data.layout} "
                     "dataset folder)")
  return os.path.abspath(os.path.expanduser(data.root))


def prepare_data(data: ml_collections.ConfigDict, *, rerender: bool = True) -> str:
  """Returns the dataset root; renders the synthetic dataset there if absent.

  A synthetic folder rendered with other settings is a cache and is rendered
  again; with ``rerender=False`` (evaluating a finished run on it) that is an
  error naming the settings that differ, so that a shared folder is never
  replaced by an evaluation.
  """
  root = os.path.abspath(os.path.expanduser(data.root))
  if data.layout == "synthetic":
    from t5video.data import synthetic
    done = os.path.join(root, "DONE")
    rendered = {}
    if os.path.isfile(done):
      with open(done) as f:
        rendered = json.load(f).get("config", {})
    kwargs = {"backgrounds": tuple(data.get("synthetic_backgrounds") or ()) or None,
              "max_distractors": int(data.get("synthetic_max_distractors", 2))}
    # held-out geometry: only what the config sets (the renderer's defaults otherwise)
    if data.get("synthetic_sizes"):
      kwargs["sizes"] = tuple(tuple(int(v) for v in s) for s in data.synthetic_sizes)
    if data.get("synthetic_fps"):
      kwargs["fps_choices"] = tuple(int(v) for v in data.synthetic_fps)
    if data.get("synthetic_seconds"):
      if len(data.synthetic_seconds) != 2:
        raise ValueError(f"config.data.synthetic_seconds must be (min, max), got {tuple(data.synthetic_seconds)}")
      kwargs["min_seconds"], kwargs["max_seconds"] = (float(v) for v in data.synthetic_seconds)
    # The settings this config controls, as DONE records them: a finished folder rendered with them
    # by this generator version is used as it is, whatever else it was rendered with (a folder from
    # `t5video data synthetic` with other frame sizes, say; the geometry counts only when the config
    # sets it).
    full = synthetic.render_dataset(root, data.num_videos, data.synthetic_seed, settings_only=True, **kwargs)
    controlled = ["generator_version", "num_videos", "seed", "backgrounds", "max_distractors",
                  *(k for k in ("sizes", "fps_choices", "min_seconds", "max_seconds") if k in kwargs)]
    differ = sorted(k for k in controlled if rendered.get(k) != full.get(k))
    if differ:
      if rendered and not rerender:
        raise ValueError(f"config.data.root={data.root!r} holds a synthetic dataset rendered with other "
                         f"settings (differing: {', '.join(differ)}); pass another --config.data.root")
      shown = {k: v for k, v in kwargs.items() if k not in ("backgrounds", "max_distractors")}
      print(f"rendering the synthetic dataset ({data.num_videos} clips, seed {data.synthetic_seed}"
            f"{', backgrounds ' + '/'.join(kwargs['backgrounds']) if kwargs['backgrounds'] else ''}, at most "
            f"{kwargs['max_distractors']} distractors{''.join(f', {k} {v}' for k, v in shown.items())}) "
            f"into {root}", flush=True)
      synthetic.render_dataset(root, data.num_videos, data.synthetic_seed, overwrite=True, **kwargs)
  elif not data.root:
    raise ValueError(f"config.data.root is empty: pass --config.data.root=DIR (the {data.layout} "
                     "dataset folder)")
  elif not os.path.exists(root):
    raise FileNotFoundError(f"config.data.root={data.root!r} does not exist")
  return root


def read_split(data: ml_collections.ConfigDict, root: str, split: str) -> list[VideoRecord]:
  """The records of one split, whatever the layout."""
  if data.layout in ("synthetic", "generic"):
    ann = os.path.join(root, data.get("annotations", "") or "annotations.jsonl")
    records = layouts.read_generic(ann, root=root)
    records = [r for r in records if r.split == split]
  else:
    records = layouts.read_dataset(data.layout, root, split)
  if not records:
    raise ValueError(f"no records in split {split!r} of {data.layout} dataset at {root}")
  return records


@dataclasses.dataclass(frozen=True)
class ConceptSampling:
  """Training's concept draw (:func:`concepts.sample_concepts`): each training clip's
  similarities to the vocabulary, and the softmax temperature."""
  vocab: tuple[str, ...]
  sims: dict  # video id -> [len(vocab)] cosine similarities
  temperature: float


class TextTransform:
  """Per-example: picks the task, writes thoughts, tokenises (runs in Grain workers).

  Produces ``input_ids``/``attention_mask`` ``[max_input_len]``,
  ``decoder_input_ids``/``decoder_target``/``decoder_mask`` ``[max_target_len]``
  and ``task_id``.
  """

  def __init__(self, tokenizer: tokenizer_lib.Tokenizer, *, tasks: dict[str, float],
               thought_cfg: thoughts_lib.ThoughtConfig, max_input_len: int, max_target_len: int,
               seed: int, concepts: Optional[dict[str, list[str]]] = None,
               draft_vocab: Sequence[str] = (), features_key: str = "",
               qa: Optional[dict[str, list[dict]]] = None,
               drafts: Optional[dict[str, str]] = None,
               concept_sampling: Optional["ConceptSampling"] = None):
    names = [k for k, w in tasks.items() if w > 0]
    weights = np.asarray([tasks[k] for k in names], np.float64)
    self.task_names, self.task_p = names, weights / weights.sum()
    self.tok = tokenizer
    self.thought_cfg = thought_cfg
    self.max_input_len, self.max_target_len = max_input_len, max_target_len
    self.seed = seed
    self.concepts = concepts or {}
    self.draft_vocab = list(draft_vocab)
    self.features_key = features_key  # read cached features from this key instead of frames
    self.qa = qa or {}  # video id -> its QA pairs (t5video.data.qa)
    # video id -> an earlier checkpoint's caption (t5video.recipes.captiont5.drafts); None:
    # drafts are corrupted references (thoughts.drafts.source='corrupted_reference')
    self.drafts = drafts
    # concepts drawn by similarity per example (None: each clip's top k, as in evaluation)
    self.concept_sampling = concept_sampling

  def target_text(self, task: str, ex: dict, rng: np.random.Generator) -> str:
    if task == "caption":
      caps = ex["captions"]
      return caps[int(rng.integers(len(caps)))] if caps else ""
    if task == "classify":
      return ex["label"]
    if task == "qa":
      return ex["_qa_pair"]["answer"]
    return thoughts_lib.tags_text(ex["tags"])

  def __call__(self, ex: dict) -> dict:
    rng = np.random.default_rng([self.seed, 17, int(ex["epoch"]), int(ex["position"]),
                                 int(ex["index"]) + 1])
    available = [t for t in self.task_names
                 if (t != "caption" or ex["captions"]) and (t != "classify" or ex["label"])
                 and (t != "tags" or ex["tags"]) and (t != "qa" or self.qa.get(ex["video_id"]))]
    if not available:
      available = self.task_names
    p = np.asarray([self.task_p[self.task_names.index(t)] for t in available])
    task = available[int(rng.choice(len(available), p=p / p.sum()))]
    pair = None
    if task == "qa":
      pairs = self.qa.get(ex["video_id"]) or [{"question": "", "answer": ""}]
      pair = pairs[int(rng.integers(len(pairs)))]
      ex = {**ex, "_qa_pair": pair}
    target = self.target_text(task, ex, rng)
    draft = None
    if task == "caption" and "draft" in self.thought_cfg.sources:
      if self.drafts is not None:  # the draft model's caption of this clip
        draft = self.drafts.get(str(ex["video_id"]))
      elif ex["captions"]:  # 'corrupted_reference': the answer, with words dropped or swapped
        ref = ex["captions"][int(rng.integers(len(ex["captions"])))]
        draft = thoughts_lib.corrupt_caption(ref, self.thought_cfg.draft_corruption,
                                             self.draft_vocab, rng)
    concepts = self.concepts.get(ex["video_id"])
    cs = self.concept_sampling
    if cs is not None and ex["video_id"] in cs.sims:  # (set only when 'concepts' is a source)
      concepts = concepts_lib.sample_concepts(cs.vocab, cs.sims[ex["video_id"]], self.thought_cfg.top_k,
                                              cs.temperature, rng)
    thoughts = thoughts_lib.build_thoughts(
        ex["metadata"], ex["subtitle"], self.thought_cfg, concepts=concepts, draft=draft, rng=rng)
    text = (f"{qa_lib.prompt(pair)} {thoughts}".strip() if pair is not None
            else thoughts_lib.encoder_text(task, thoughts))
    ids, mask = self.tok.encode_batch([text], self.max_input_len)
    tgt, tmask = self.tok.encode_batch([target], self.max_target_len)
    weight = float(bool(ex["valid"]))
    visual = ({"features": np.asarray(ex[self.features_key], np.float32)} if self.features_key
              else {"frames": ex["frames"]})
    return {
        **visual, "frame_mask": np.asarray(ex["frame_mask"]).astype(np.int32),
        "input_ids": ids[0], "attention_mask": mask[0],
        "decoder_input_ids": np.asarray(t5_lib.shift_right(tgt, 0, 0))[0].astype(np.int32),
        "decoder_target": tgt[0], "decoder_mask": tmask[0],
        "task_id": np.int32(TASK_IDS[task]), "weight": np.float32(weight),
        # kept for the loader's failure accounting; removed before the step
        **{k: ex[k] for k in pipeline.PIPELINE_KEYS},
    }



# =============================================================================
# The task's data: records, tokenizer, cached features, CLIP-guided concepts
# =============================================================================

class _Splits(dict):
  """Records per split, read on first use (a Task built from a workdir reads none)."""

  def __init__(self, read):
    super().__init__()
    self._read = read

  def __missing__(self, split):
    self[split] = records = self._read(split)
    return records


class DataMixin:
  """CaptionT5Task's data side (its ``config``, ``root``, ``records`` and ``workdir``)."""

  def _tokenizer(self) -> tokenizer_lib.Tokenizer:
    """``text.tokenizer`` (a prepared run's copy in its workdir), an HF T5's, else trained here."""
    cfg = self.config
    if cfg.text.tokenizer:
      return tokenizer_lib.load_tokenizer(cfg.text.tokenizer)
    if cfg.model.t5_init:
      return tokenizer_lib.HFTokenizer(cfg.model.t5_init)
    # From scratch: a SentencePiece model trained on this dataset's training text,
    # cached beside the data under a name that hashes that text.
    texts = []
    for r in self.records[cfg.data.train_split]:
      texts += r.captions + [r.label or "", ", ".join(r.tags), r.subtitle]
      texts += [f"{k}: {v}" for k, v in r.metadata.items()]
      for pair in r.extra.get("qa") or ():  # QA pairs (t5video.data.qa), where the data has them
        texts += [pair["question"], pair["answer"], *pair.get("choices", ())]
    texts += list(thoughts_lib.TASK_PROMPTS.values()) + ["concepts:", "draft:", "subtitle:"]
    if any(r.extra.get("qa") for r in self.records[cfg.data.train_split]):
      texts += [qa_lib.PROMPT, qa_lib.OPTIONS]
    concepts_file = os.path.join(self.root, "concepts.txt")
    if paths.exists(concepts_file):
      with open(concepts_file) as f:
        texts += [line.strip() for line in f if line.strip()]
    texts = [t for t in texts if t]
    digest = hashlib.sha1("\n".join(texts).encode()).hexdigest()[:10]
    path = os.path.join(self.root, f"t5video_spiece_{cfg.text.vocab_size}_{digest}.model")
    if os.path.isfile(path):
      return tokenizer_lib.SentencePieceTokenizer(path)
    return tokenizer_lib.train_sentencepiece(texts, path, cfg.text.vocab_size)

  def frame_transforms(self) -> list:
    """What follows decoding in every loader: constant pixels (and features) when
    ``data.constant_pixels`` (the text-only control), else nothing."""
    if not self.config.data.constant_pixels:
      return []
    from t5video.evaluate import controls  # pylint: disable=g-import-not-at-top
    return [pipeline.ConstantPixels({"frames": controls.CONSTANT_PIXEL, "features": 0.0,
                                     self.config.data.features_layer: 0.0})]

  # ---- cached features -----------------------------------------------------------
  def feature_source(self, split: str):
    """The cached features of ``split`` (a Grain source aligned with its records)."""
    from t5video.data import features as features_lib
    d = self.config.data
    path = os.path.join(d.features_dir, split)
    return features_lib.FeatureSource(path, records=self.records[split], layers=[d.features_layer])

  def _features_shape(self):
    if not self.config.data.features_dir:
      return None
    item = self.feature_source(self.config.data.train_split)[0]
    return tuple(np.asarray(item[self.config.data.features_layer]).shape)

  # ---- CLIP-guided concepts -------------------------------------------------------
  def concepts(self) -> dict[str, list[str]]:
    """Training video_id -> top concepts from the concept CLIP (empty when not configured).

    Computed once, for the training loader, with each clip's similarities to
    the whole vocabulary (:attr:`concept_sims`, what training samples from). A
    training clip of fold ``k`` is scored by the CLIP trained without fold ``k``
    (``thoughts.clip_stage.folds``); an image CLIP (``thoughts.concepts_clip``)
    never saw the clips and scores them all. Other clips (evaluation, a user's
    files) are scored from the frames of their batch (:meth:`batch_concepts`),
    so corrupted frames get their own.
    """
    if self._concepts is not None:
      return self._concepts
    self._concepts, self._concept_paths, self.concept_sims = {}, {}, {}
    tc = self.config.thoughts
    if "concepts" not in tc.sources:
      return self._concepts
    scorers = self.concept_scorers()
    vocab = self.concept_vocabulary()
    # Frames as the concept CLIP takes them (its frame count and size).
    spec = decode_lib.SamplingSpec(num_frames=scorers[0].num_frames, size=scorers[0].image_size)
    loader = pipeline.make_loader(
        list(self.records[self.config.data.train_split]),
        transform=pipeline.VideoDecodeTransform(spec, train=False, seed=0),
        batch_size=32, seed=0, shuffle=False, num_epochs=1, shard_index=0, shard_count=1,
        worker_count=0, drop_remainder=False, pad_to_batch=True,
        read_threads=self.config.data.read_threads, extra_transforms=self.frame_transforms())
    for batch in loader:
      frames = np.asarray(batch["frames"])
      sims = np.stack([s.scores(frames, vocab) for s in scorers])  # [folds, b, concepts]
      for i, (vid, valid) in enumerate(zip(batch["video_id"], batch["valid"])):
        if not bool(valid):
          continue
        # The CLIP that never saw this clip (the only one when not cross-fitted).
        row = sims[fold_of(vid, len(scorers)) if len(scorers) > 1 else 0, i]
        self._concepts[vid] = concepts_lib.top_concepts(vocab, row, tc.top_k)
        self.concept_sims[vid] = np.asarray(row, np.float32)
        self._concept_paths[vid] = batch["path"][i]
    logging.info("CLIP-guided concepts for %d clips from %s", len(self._concepts), self.concept_dirs())
    return self._concepts

  def batch_concepts(self, batch: dict) -> list[Optional[list[str]]]:
    """Concepts per example: a training clip's precomputed ones (when the batch holds that
    clip's own video), else scored from the batch's frames by every fold's CLIP (their cosine
    similarities averaged): a clip fed another clip's frames gets the concepts of those."""
    if "concepts" not in self.config.thoughts.sources:
      return [None] * len(batch["video_id"])
    # A user's own files (`t5video caption`) need no training clip's concepts: a restored run
    # then reads no dataset.
    user_files = all(str(v).startswith("user-file:") for v in batch["video_id"])
    known = {} if user_files and self._concepts is None else self.concepts()
    own = [v in known and self._concept_paths.get(v) == p for v, p in zip(batch["video_id"], batch["path"])]
    missing = [i for i, ok in enumerate(own) if not ok]
    out = [known[v] if ok else None for v, ok in zip(batch["video_id"], own)]
    if missing and "frames" in batch:  # evaluation clips, a user's own files (`t5video caption`)
      vocab = self.concept_vocabulary()
      frames = np.asarray(batch["frames"])[missing]
      sims = np.mean([s.scores(s.fit_frames(frames), vocab) for s in self.concept_scorers()], axis=0)  # [m, concepts]
      for i, row in zip(missing, sims):
        out[i] = concepts_lib.top_concepts(vocab, row, self.config.thoughts.top_k)
    return out

  def concept_dirs(self) -> list[str]:
    """Where the concepts come from: ``thoughts.concepts_clip`` (an HF CLIP directory or a
    ViFi-CLIP workdir), else the video-text CLIP(s) of :meth:`clip_dirs`."""
    tc = self.config.thoughts
    return [tc.concepts_clip] if tc.get("concepts_clip") else self.clip_dirs()

  def concept_scorers(self) -> list:
    """The scorers of :meth:`concept_dirs` (the video-text CLIPs' own when they are the same)."""
    if not self.config.thoughts.get("concepts_clip"):
      return self.clip_scorers(purpose="thoughts.sources has 'concepts'")
    if self._concept_scorers is None:
      path = self.config.thoughts.concepts_clip
      vificlip_run = cfg.is_vificlip_workdir(path)
      if not vificlip_run and not paths.exists(paths.join(path, "config.json")):
        raise FileNotFoundError(f"thoughts.concepts_clip={path!r} is neither an HF CLIP directory (no "
                                "config.json) nor a finished ViFi-CLIP workdir")
      if vificlip_run:
        from t5video.recipes.vificlip import predict as vificlip_predict  # heavy; only when used
        self._concept_scorers = [vificlip_predict.ConceptScorer.from_workdir(path)]
      else:
        self._concept_scorers = [concepts_lib.ImageClipScorer(path, num_frames=self.config.data.num_frames)]
    return self._concept_scorers

  def clip_dirs(self) -> list[str]:
    """The video-text CLIP workdirs: ``thoughts.clip_workdir``, else ``<workdir>/vificlip``
    (``<workdir>/vificlip_fold<k>`` for each fold when cross-fitted)."""
    tc = self.config.thoughts
    if tc.clip_workdir:
      return [tc.clip_workdir]
    if not self.workdir:
      return []
    folds = int(tc.clip_stage.get("folds", 1))
    if folds > 1:
      return [os.path.join(self.workdir, f"{CLIP_STAGE_DIR}_fold{k}") for k in range(folds)]
    return [os.path.join(self.workdir, CLIP_STAGE_DIR)]

  def clip_scorers(self, purpose: str) -> list:
    """The video-text CLIPs (restored ViFi-CLIP runs) for concepts and caption ranking."""
    if self._clip_scorers is None:
      from t5video.recipes.vificlip import predict as vificlip_predict  # heavy; only when used
      dirs = self.clip_dirs()
      if not dirs:
        raise ValueError(f"{purpose}, which needs a video-text CLIP, but thoughts.clip_workdir is not set")
      self._clip_scorers = [vificlip_predict.ConceptScorer.from_workdir(d) for d in dirs]
    return self._clip_scorers

  def needs_clip(self) -> bool:
    """Whether this run uses a video-text CLIP (concepts, re-ranking, or its vision tower)."""
    tc = self.config.thoughts
    return (("concepts" in tc.sources and not tc.get("concepts_clip")) or self.rerank_candidates() > 0
            or bool(tc.clip_stage.get("init_vision") and not self.config.model.clip_init))

  def vision_init_dir(self) -> str:
    """The ViFi-CLIP workdir whose vision tower CaptionT5's starts from ('' = none)."""
    m, st = self.config.model, self.config.thoughts.clip_stage
    if m.clip_init and cfg.is_vificlip_workdir(m.clip_init):
      return m.clip_init
    if st.get("init_vision") and not m.clip_init and not self.features_shape:
      dirs = self.clip_dirs()
      if not dirs:
        raise ValueError("thoughts.clip_stage.init_vision: no CLIP stage directory (the run has no workdir)")
      return dirs[0]
    return ""

  def concept_vocabulary(self) -> list[str]:
    """``thoughts.concepts_file``, else ``<data.root>/concepts.txt``, else words of the training captions.

    The fallback takes the ``thoughts.vocab_size`` most frequent words of the
    training captions that are not function words (ties broken
    alphabetically), so a user's own dataset works without a vocabulary file.
    """
    tc = self.config.thoughts
    path = tc.concepts_file or os.path.join(self.root, "concepts.txt")
    if paths.exists(path):
      return [line.strip() for line in paths.read_text(path).split("\n") if line.strip()]
    if tc.concepts_file:
      raise FileNotFoundError(f"thoughts.concepts_file={tc.concepts_file!r} does not exist")
    counts = collections.Counter(
        w for r in self.records[self.config.data.train_split] for c in r.captions
        for w in re.findall(r"[a-z][a-z'-]+", c.lower()) if w not in FUNCTION_WORDS and len(w) > 2)
    vocab = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][:int(tc.vocab_size)]
    if not vocab:
      raise ValueError(f"no concept vocabulary: {path} is missing and the training captions have no words")
    return vocab

