r"""CaptionT5 on the rendered synthetic dataset: the embedded default and main job.

Renders the synthetic dataset (plain backgrounds, no distractors) into
data_cache/synthetic on first use, trains a small video-text CLIP on the training
clips (stage 0, the ViFi-CLIP recipe, into <workdir>/vificlip), starts CaptionT5's
vision tower from it and re-ranks the candidate captions with it, trains the rest
of a small CaptionT5 (a temporal transformer and a T5 from scratch) for captions,
classes and tags on CPU, evaluates on the test split and prints the table (CIDEr,
BLEU-4, top-1, macro-F1, tail-class recall) beside trivial baselines.

  t5video train --config configs/captiont5/synthetic.py --workdir runs/demo

Variants through the config argument (comma-separated, e.g. ``:nothoughts,frac10``):

* ``runlocal``: a tiny run that finishes in about a minute (smoke test).
* ``concepts``: the stage-0 CLIP's top concepts become a thought as well (cross-fitted in two folds).
* ``noclip``: no video-text CLIP stage: a vision tower from scratch, no concepts, no re-ranking.
* ``standins``: as ``noclip``, but the vision tower and the T5 (with its tokenizer) start from the
  project's pretrained stand-ins (``t5video standins``, built once and cached; docs/standins.md),
  through ``model.clip_init`` / ``model.t5_init``, the path a user's HF checkpoints take.
* ``flatten``: position-keeping frame tokens (each frame's patch tokens made one token by a Dense,
  read in order), the design that won the from-scratch probes; in the demo it lost (docs/results.md).
* ``refine``: self-refinement: the first caption is fed back as a ``draft`` thought. In training the
  drafts come from an earlier checkpoint (stages ``draft_model``, 400 steps without drafts, and
  ``drafts``, which captions the training clips with it: t5video/recipes/captiont5/drafts.py), never
  from the references. About 3 more minutes.
* ``vifi_standins``: stage 0 fine-tunes the stand-in image CLIP on the clips (``configs/vificlip/
  synthetic.py:mean,standins``), CaptionT5's vision tower and the re-ranker come from it and the T5
  (with its tokenizer) from the T5 stand-in: a pretrained image CLIP adapted to video, as in the papers.
* ``ordered_clip``: stage 0 is ViFi-CLIP with ``temporal='ordered'`` (the mean plus an ordered
  read-out of position-keeping frame tokens) instead of the mean: its concepts and re-ranking see
  the order of frames.
* ``grid``: CaptionT5 reads each frame's patch grid (pooled to 4x4 cells, one position-keeping token
  per frame, a temporal transformer over them) instead of the pooled class token; with
  ``ordered_clip`` that pathway starts from stage 0's ordered read-out (its temporal module and norm),
  so the captioner's frame tokens begin where the stage's order-aware video embedding came from.
* ``videotoken``: one more visual token, stage 0's video embedding (ViFi-CLIP's per-frame projection
  averaged, plus its ordered read-out with ``ordered_clip``), computed inside CaptionT5 by the stage's
  own weights: what the stage's zero-shot classification reads, handed to the T5 encoder. The stage's
  encoder is frozen (``optim.freeze``): trained on, it collapsed to the prior (docs/results.md). With
  ``vifi_standins,ordered_clip`` and ``--config.model.t5_init=`` this is the first design whose captions
  name actions and order (3 CaptionT5 seeds on one stage 0: action 62.1 ± 0.7; docs/results.md).
* ``nothoughts``: thoughts switched off (ablation; the CLIP stage still re-ranks).
* ``frac10``: 10% of the training clips.
* ``temporal=mean|transformer|resampler``: the temporal module.
* ``peft=lora|adapters|prompt|bitfit|last_n``: parameter-efficient tuning
  (meaningful with ``--config.init_from.path=<a trained workdir>``).
* ``textonly``: the text-only control as well (``eval.controls``): the same recipe trained again on
  constant pixels in <workdir>/control_text_only, its metrics in the table as ``control_text_only_*``.
  Off by default: it is a second CaptionT5 training run (about 7 more minutes on 2 cores). The
  other-frames control (one more evaluation pass) is always on.

Hardware: a laptop CPU (2 cores): rendering, training and evaluation took 10 minutes on the
reference machine on 2026-11-22 and about 18 on 2026-11-29 (CaptionT5 at 1.6 instead of 3.0
steps/s). Results and the commands that produce them: docs/results.md.
"""

from t5video.recipes import captiont5

STANDINS = "standins:configs/standins/default.py"  # t5video standins' CLIP and T5 (cached)


def get_config(arg=None):
  args = dict(a.split("=", 1) if "=" in a else (a, True) for a in (arg or "").split(",") if a)
  c = captiont5.base_config()
  c.data.layout = "synthetic"
  c.data.root = "data_cache/synthetic"
  c.data.num_videos = 600
  # Plain backgrounds, no distractor objects: what a small CLIP trained from scratch on CPU learns
  # to see (docs/vificlip.md); '()' / 2 render the full textured scenes.
  c.data.synthetic_backgrounds = ("plain",)
  c.data.synthetic_max_distractors = 0
  c.data.num_frames = 8
  c.data.size = 64
  c.data.cache_frames = True
  c.tasks = dict(caption=0.5, classify=0.25, tags=0.25, qa=0.0)
  c.text.max_input_len = 128  # task prompt + thoughts (concepts, metadata, subtitle, draft)
  c.text.max_target_len = 32
  c.thoughts.sources = ("metadata", "subtitle")  # ':refine' adds the model's own draft
  c.model.clip = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, image_size=64, patch_size=16, projection_dim=128,
                      hidden_act="quick_gelu")
  c.model.t5 = dict(d_model=128, d_kv=32, d_ff=512, num_layers=2, num_decoder_layers=2,
                    num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                    dropout_rate=0.1, relative_attention_num_buckets=32,
                    relative_attention_max_distance=64)
  # One pooled CLIP token per frame, a temporal transformer over them. ':flatten' gives the
  # position-keeping frame tokens that won the from-scratch probes (docs/results.md, "What the
  # pixels carry"); in this demo (a vision tower from the stage-0 CLIP, 1200 steps) they lost on
  # every metric and learned no more of the actions (docs/results.md, "The demo on the honest world").
  c.model.temporal = dict(kind="transformer", num_layers=1, num_heads=4)
  c.train.num_steps = 1200
  c.train.batch_size = 16
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.train.max_to_keep = 2
  c.optim.learning_rate = 2e-3
  c.optim.warmup_steps = 100
  c.optim.b2 = 0.98
  c.eval.controls = ("other_frames",)  # ':textonly' adds the text-only control (a second training)
  # Stage 0: a video-text CLIP (the ViFi-CLIP recipe) trained on the same training clips into
  # <workdir>/vificlip. It stands in for a pretrained CLIP: CaptionT5's vision tower starts from
  # it (from scratch, the pixels go unused: docs/results.md), and it re-ranks the beam's candidate
  # captions. Arg ``concepts`` adds its top concepts as a thought, cross-fitted in two folds.
  c.thoughts.clip_stage = dict(config="configs/vificlip/synthetic.py:mean", num_steps=2000, folds=1,
                               init_vision=True)
  c.thoughts.top_k = 4
  c.eval.rerank = dict(candidates=4, source="beam", weight=5.0, top_p=0.9, temperature=1.0, seed=0)

  if "runlocal" in args:
    c.data.num_videos = 90
    c.data.root = "data_cache/synthetic_small"
    c.train.num_steps = 30
    c.train.batch_size = 8
    c.train.log_every = 10
    c.train.checkpoint_every = 15
    c.optim.warmup_steps = 5
    c.eval.max_examples = 16
    c.thoughts.clip_stage = dict(config="configs/vificlip/synthetic.py:mean,tiny", num_steps=30, folds=1,
                                 init_vision=False)  # the tiny stage's tower is smaller than model.clip
  if "concepts" in args:  # the CLIP's top concepts as a thought too, cross-fitted
    c.thoughts.sources = ("concepts",) + tuple(c.thoughts.sources)
    c.thoughts.clip_stage.folds = 2
  if "noclip" in args:  # no video-text CLIP: vision from scratch, no concept thoughts, no re-ranking
    c.thoughts.sources = tuple(x for x in c.thoughts.sources if x != "concepts")
    c.thoughts.clip_stage.init_vision = False
    c.eval.rerank.candidates = 0
  if "standins" in args:  # pretrained stand-ins instead of towers from scratch (no CLIP stage)
    c.thoughts.sources = tuple(x for x in c.thoughts.sources if x != "concepts")
    c.thoughts.clip_stage.init_vision = False
    c.eval.rerank.candidates = 0
    c.model.clip_init = STANDINS
    c.model.t5_init = STANDINS
  if "flatten" in args:  # position-keeping frame tokens (each frame's patch tokens -> one token)
    c.model.visual_tokens = "patches"
    c.model.temporal = dict(kind="transformer", num_layers=1, num_heads=4, frame_tokens="flatten")
  if "refine" in args:  # self-refinement: a first caption is fed back as a 'draft' thought
    c.thoughts.sources = tuple(c.thoughts.sources) + ("draft",)
    c.thoughts.drafts.num_steps = 400 if "runlocal" not in args else 10
    c.eval.refine = True
  if "vifi_standins" in args:  # stage 0 fine-tunes the stand-in image CLIP on video (ViFi-CLIP)
    # CaptionT5's vision tower and the re-ranker come from that stage, the T5 from its stand-in:
    # the papers' setting (a pretrained image CLIP adapted to video, a pretrained T5).
    c.thoughts.clip_stage.config = "configs/vificlip/synthetic.py:mean,standins"
    c.thoughts.clip_stage.init_vision = True
    c.model.t5_init = STANDINS
  if "ordered_clip" in args:  # stage 0 with ViFi-CLIP's ordered read-out (t5video/models/vificlip.py)
    c.thoughts.clip_stage.config = c.thoughts.clip_stage.config.replace(":mean", ":ordered")
  if "grid" in args:  # the pooled patch grid, one token per frame (as ViFi-CLIP's ordered read-out)
    c.model.visual_tokens = "grid"
    c.model.grid_cells = 4
    # heads and frames as the ordered read-out's (vificlip.ordered_readout_heads(128) = 4)
    c.model.temporal = dict(kind="transformer", num_layers=1, num_heads=4, frame_tokens="flatten",
                            max_frames=c.data.num_frames)
  if "videotoken" in args:  # stage 0's video embedding as one more visual token
    c.model.video_token = "ordered" if "ordered_clip" in args else "mean"
    c.optim.freeze = r"^(clip|ordered|video_projection|grid_norm)/"  # the stage-0 encoder stays as trained
  if "nothoughts" in args:
    c.thoughts.sources = ()
  if "frac10" in args:
    c.data.train_fraction = 0.1
  if "temporal" in args:
    c.model.temporal.kind = args["temporal"]
  if "textonly" in args:  # the same recipe on constant pixels, as a stage (t5video.evaluate.controls)
    c.eval.controls = tuple(c.eval.controls) + ("text_only",)
  if "peft" in args:
    c.peft.method = args["peft"]
    c.optim.learning_rate = 5e-3
  return c
