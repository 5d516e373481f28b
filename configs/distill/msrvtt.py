r"""Distilling a CaptionT5 captioner into a video-text dual encoder on real videos (arXiv 2401.06129).

Labelled set: MSR-VTT's training videos with their captions (``data.root``: the 'msrvtt' layout);
unlabelled set: your own videos (``student.unlabelled``: a folder, every video file below it, or a
generic-layout annotation file); evaluation: zero-shot text-to-video and video-to-text retrieval on
MSR-VTT's test split (R@1/5/10, median rank), none of whose clips any stage trained on::

  t5video train --config configs/distill/msrvtt.py --workdir /runs/distill_msrvtt \
      --config.data.root=/data/msrvtt --config.student.unlabelled=/data/my_videos

The stages: the teacher, CaptionT5 from CLIP ViT-B/16 + FLAN-T5-base (configs/captiont5/msrvtt.py,
local HF snapshots under $T5VIDEO_CHECKPOINTS), adapted in the paper's V->L order: visual adaptation
(T5 frozen; captions; batch 64, 40K steps) then language adaptation (vision frozen; captions and
video QA where the annotation rows carry ``qa`` pairs, t5video.data.qa; batch 256, 10K steps), both
Adafactor, lr 1e-4, 1K warm-up, rsqrt decay, 8 frames; pseudo-labelling, 4 nucleus-sampled captions
(top-p 0.9) per unlabelled clip; the student, ViFi-CLIP's joint space-time encoder from CLIP ViT-B/16
(``:l14``: ViT-L/14, the paper's) with a new temporal position embedding, 4 frames, a 12-layer text
tower with 77 tokens, InfoNCE, AdamW (0.9, 0.999), weight decay 0.01, batch 1024, 20 epochs over
``STUDENT_CLIPS`` clips (set ``--config.train.num_steps`` for your set's size).

What differs from the paper: its teacher is PaLI-3 (we use CaptionT5); its scale jitter (0.9-1.33
before the 224 crop) is a resize to 256 and a random 224 crop here; Adafactor's beta2 is its own
decay schedule (the paper sets 0.8); the student's learning rate (1e-5) is our choice (not given).

Hardware: a TPU v4-32 / v5e-32 slice or 8 x H100 80GB for the student's batch of 1024 (bfloat16,
``train.micro_batches`` on smaller memory); the teacher stages fit a v4-8; pseudo-labelling runs on
every host of the job, each its share of the clips, and resumes after preemption.
"""

from __future__ import annotations

import os

import ml_collections

from t5video.recipes import distill
from t5video.recipes.vificlip import config as vificlip_config
from t5video.config import checkpoint_dir

STUDENT_CLIPS = 100_000  # the unlabelled set's size assumed for the student's schedule


# The accelerators this config is checked on (`t5video compile --config configs/distill/msrvtt.py` with no --topology;
# tests/test_recipe_compile.py): arg -> slices.
SLICES = {"": ("v4-32", "v5litepod-32")}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "", "b16", "l14"):
    raise ValueError(f"configs/distill/msrvtt.py: arg must be b16 or l14, got {arg!r}")
  clip_name = "clip-vit-large-patch14" if arg == "l14" else "clip-vit-base-patch16"
  clip_dir = os.path.join(checkpoint_dir(), clip_name)
  student = vificlip_config.recipe_config(
      clip_dir=clip_dir, layout="msrvtt", root="", num_frames=4, batch_size=1024, learning_rate=1e-5,
      epochs=20, num_train=STUDENT_CLIPS, warmup_epochs=1.0, mixup_alpha=0.0)
  c = distill.base_config()
  for section in ("mesh", "train", "optim", "init_from"):
    c[section] = student[section]
  c.seed = 0
  c.optim.b2 = 0.999
  c.optim.weight_decay = 0.01
  c.train.best_metric = "t2v/R@1"
  c.model.variant = "L/14" if arg == "l14" else "B/16"
  c.model.temporal = "spacetime"
  c.model.tokenizer = clip_dir
  c.model.sentencepiece_vocab = 0
  c.model.text_len = 77
  c.data.layout = "msrvtt"
  c.data.root = ""                    # --config.data.root=/data/msrvtt
  c.data.num_frames = 4
  c.data.size = 224
  c.data.resize_short = 256
  c.data.flip = False
  c.data.worker_count = 8
  c.data.read_threads = 4
  c.eval.split = "test"
  c.eval.protocols = ("retrieval",)
  c.eval.controls = ("other_frames",)
  c.train.best_metric = ""

  c.student.sources = ("pseudo",)
  c.student.labelled_fraction = 1.0   # every MSR-VTT training clip is labelled
  c.student.unlabelled = ""           # --config.student.unlabelled=/data/my_videos

  c.teacher.config = "configs/captiont5/msrvtt.py:stage=1"
  c.teacher.order = "vl"
  c.teacher.visual_steps = 40_000
  c.teacher.language_steps = 10_000
  c.teacher.qa_weight = 0.3
  c.teacher.overrides = dict(
      peft=dict(method="full"),
      data=dict(num_frames=8),
      optim=dict(name="adafactor", learning_rate=1e-4, warmup_steps=1000, schedule="rsqrt", b1=0.0),
      eval=dict(controls=("other_frames",)))
  c.teacher.visual_overrides = dict(train=dict(batch_size=64))
  c.teacher.language_overrides = dict(train=dict(batch_size=256))

  c.pseudo.num_captions = 4
  c.pseudo.top_p = 0.9
  c.pseudo.batch_size = 64
  c.pseudo.chunk_size = 1024
  return c
