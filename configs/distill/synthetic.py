r"""Distilling CaptionT5 into a video-text dual encoder on the rendered synthetic world (CPU).

The pipeline of arXiv 2401.06129 (t5video.recipes.distill) on 1500 rendered clips (plain
backgrounds, no distractors, every class equally likely): 25% of the training clips keep their
captions (the small labelled set), the other 75% are the unlabelled set; every clip has a noisy
alt-text (a still description: colour and shape, each right 70% of the time, never the action).
The stages, each in its own sub-workdir, resumed at the first unfinished one:

  t5video train --config configs/distill/synthetic.py --workdir runs/distill_pseudo
  t5video train --config configs/distill/synthetic.py:labelled_only --workdir runs/distill_labelled
  t5video train --config configs/distill/synthetic.py:alt_text --workdir runs/distill_alt
  t5video train --config configs/distill/synthetic.py:mixed --workdir runs/distill_mixed
  t5video train --config configs/distill/synthetic.py:pseudo,seed=1 --workdir runs/distill_pseudo_s1

0. the project's stand-ins for a pretrained CLIP and T5 (t5video standins, docs/standins.md) are
   built into data_cache/standins on first use (a few minutes, cached), the starting point of both
   models through the Hugging Face directory path, as a real checkpoint would be;
1. ``teacher_visual`` then ``teacher_language``: CaptionT5 (configs/captiont5/synthetic.py:vifi_standins,
   ordered_clip: the demo's design, its vision tower and video token from a ViFi-CLIP stage on the
   labelled clips started from the stand-in image CLIP, trained inside the first teacher stage and
   frozen; the stand-in T5) adapted in the paper's V->L order on the labelled clips: visual
   adaptation (T5 frozen) on captions, then language adaptation (vision frozen) on captions and video
   QA about the rendered events (t5video.data.qa); ``order=lv`` reverses it, ``order=joint`` is one stage;
2. ``pseudo_label``: 4 nucleus-sampled captions (top-p 0.9) per unlabelled clip;
3. the student: ViFi-CLIP's space-time dual encoder from the stand-in CLIP (its towers, a new
   temporal position embedding, 4 frames of 64x64) trained with InfoNCE on ``student.sources``;
4. zero-shot retrieval (t2v / v2t R@1/5/10, median rank) and zero-shot classification on the test
   clips, beside chance and the other-clip's-frames control (``,textonly`` adds the text-only one).

Variants (comma-separated): ``pseudo`` (the default: pseudo-captions only), ``labelled_only``
(the labelled captions only), ``alt_text`` (every training clip's alt-text), ``mixed`` (pseudo-captions
and the labelled captions), ``order=vl|lv|joint``, ``seed=N``, ``teacher_clip=DIR`` (the teacher's video-text CLIP stage taken
from a finished ViFi-CLIP workdir, e.g. ``runs/distill_pseudo/teacher_visual/vificlip``, so that two
teacher orders share it), ``textonly``, ``scratch`` (no
stand-ins: both models from scratch, the 2-layer 64-wide student below, one joint teacher stage),
``tiny`` (a smoke test from scratch: everything shrunk, a couple of minutes).

Hardware: one CPU (2 cores): rendering takes about a minute, the teacher a few minutes, the
pseudo-labels a few clips per second, the student several minutes. Nothing is downloaded.
"""

from __future__ import annotations

import os

import ml_collections

from t5video.recipes import distill

VARIANTS = {"pseudo": ("pseudo",), "labelled_only": ("labelled",), "alt_text": ("alt_text",),
            "mixed": ("pseudo", "labelled")}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = dict(a.split("=", 1) if "=" in a else (a, "") for a in (arg or "pseudo").split(",") if a)
  variants = [a for a in args if a in VARIANTS]
  unknown = set(args) - set(VARIANTS) - {"tiny", "textonly", "order", "seed", "scratch", "teacher_clip"}
  if len(variants) > 1 or unknown:
    raise ValueError(f"configs/distill/synthetic.py: arg is one of {sorted(VARIANTS)} with optional "
                     f"tiny, scratch, textonly, order=vl|lv|joint, seed=N, teacher_clip=DIR; got {arg!r}")
  tiny = "tiny" in args
  scratch = tiny or "scratch" in args  # else both models start from the stand-ins

  c = distill.base_config()
  c.seed = int(args.get("seed") or 0)
  c.mesh.shape = (-1, 1, 1)
  c.train.num_steps = 20 if tiny else 2000
  c.train.batch_size = 8 if tiny else 16
  c.train.log_every = 10 if tiny else 100
  c.train.eval_every = 0
  c.train.checkpoint_every = 0
  c.train.max_to_keep = 1
  c.train.best_metric = ""
  c.optim.name = "adamw"              # the paper's student: AdamW (0.9, 0.999), weight decay 0.01
  c.optim.learning_rate = 2e-3 if scratch else 5e-4  # lower from pretrained towers
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 4 if tiny else 100
  c.optim.weight_decay = 0.01
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999

  # The student: a space-time dual encoder (the paper's: a joint space-time ViT, 4 frames). From the
  # stand-ins, the tower sizes and the tokenizer are the stand-in CLIP's (set when the run is prepared).
  c.model.variant = "tiny"
  c.model.vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        image_size=64, patch_size=16, projection_dim=64)
  c.model.text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      max_position_embeddings=32, projection_dim=64)
  c.model.projection_dim = 64
  c.model.temporal = "spacetime"
  c.model.prompt_template = "a video of something that {}."
  c.model.text_len = 32
  c.model.tokenizer = ""              # '' = trained when the run is prepared, into <workdir>/assets/
  c.model.sentencepiece_vocab = 400

  c.data.root = "data_cache/synthetic_distill_tiny" if tiny else "data_cache/synthetic_distill"
  c.data.synthetic = dict(num_videos=60 if tiny else 1500, seed=0, sizes=((96, 72), (128, 96)),
                          class_prior="uniform", min_seconds=1.0 if tiny else 2.0,
                          max_seconds=2.0 if tiny else 4.0, backgrounds=("plain",), max_distractors=0,
                          overwrite=True)
  c.data.num_frames = 4
  c.data.size = 64
  c.data.resize_short = 72
  c.data.flip = False                 # left and right are what the captions say
  c.data.cache_frames = True

  c.eval.split = "test"
  c.eval.protocols = ("zero_shot", "retrieval")
  c.eval.controls = ("other_frames", "text_only") if "textonly" in args else ("other_frames",)

  c.student.sources = VARIANTS[variants[0] if variants else "pseudo"]
  # A quarter of the training clips labelled (about 260 of 1050, some 16 a class for the teacher's
  # CLIP stage; a tenth until 2026-11-30); the other 790 are the unlabelled set.
  c.student.labelled_fraction = 0.25

  # The teacher from the stand-ins sees through the demo's design: a video-text CLIP stage (ViFi-CLIP
  # with the ordered read-out, from the stand-in image CLIP) on the labelled clips gives it a frozen
  # vision tower and video token, its T5 is the stand-in's. From scratch: no CLIP stage.
  c.teacher.config = ("configs/captiont5/synthetic.py:noclip" if scratch
                      else "configs/captiont5/synthetic.py:vifi_standins,ordered_clip")
  # V->L (the paper's order) adapts a pretrained captioner: from the stand-ins; from scratch one stage.
  c.teacher.order = args.get("order") or ("joint" if scratch else "vl")
  if not scratch:
    c.standins.dir = "data_cache/standins"  # built there on first use (`t5video standins`), cached
  c.teacher.visual_steps = 8 if tiny else 600
  c.teacher.language_steps = 8 if tiny else 600
  # The teacher at the student's data scale: no draft (a second decoding pass per clip), its own
  # frames (8 of 64x64), trained on the labelled clips only.
  c.teacher.overrides = dict(
      thoughts=dict(sources=("metadata", "subtitle")),
      text=dict(max_input_len=128),  # a QA prompt with its options before the thoughts (the demo's 64 is too few)
      eval=dict(refine=False, max_examples=0, controls=("other_frames",), meteor="false"),
      train=dict(batch_size=16, checkpoint_every=0, log_every=50))

  if args.get("teacher_clip"):  # a finished video-text CLIP stage (another order's) instead of a new one
    c.teacher.overrides.thoughts.clip_workdir = os.path.abspath(args["teacher_clip"])

  c.pseudo.num_captions = 4
  c.pseudo.top_p = 0.9
  c.pseudo.batch_size = 16
  c.pseudo.chunk_size = 64

  if tiny:
    # One layer per tower: compiling, not computing, is what a tiny run spends its time on.
    c.model.vision = dict(c.model.vision.to_dict(), hidden_size=32, intermediate_size=64, image_size=32,
                          patch_size=16, projection_dim=32, num_hidden_layers=1)
    c.model.text = dict(c.model.text.to_dict(), hidden_size=32, intermediate_size=64, projection_dim=32,
                        num_hidden_layers=1)
    c.model.projection_dim = 32
    c.model.sentencepiece_vocab = 200
    c.data.size = 32
    c.data.resize_short = 36
    c.teacher.overrides = dict(
        thoughts=dict(sources=("metadata", "subtitle")),
        data=dict(num_frames=4, size=32),
        model=dict(clip=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                             image_size=32, patch_size=16, projection_dim=32),
                   t5=dict(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2,
                           feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
                           relative_attention_num_buckets=32, relative_attention_max_distance=64),
                   temporal=dict(kind="mean")),
        text=dict(max_input_len=40, max_target_len=16),
        tasks=dict(caption=1.0, classify=0.0, tags=0.0),
        eval=dict(refine=False, max_examples=8, batch_size=8, controls=(), meteor="false"),
        train=dict(batch_size=8, checkpoint_every=0, log_every=4, progress=False),
        optim=dict(learning_rate=1e-2, warmup_steps=2))
    c.pseudo.num_captions = 3
    c.pseudo.batch_size = 8
    c.pseudo.chunk_size = 8
  return c
