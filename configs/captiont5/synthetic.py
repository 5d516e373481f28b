r"""CaptionT5 on the rendered synthetic dataset: the embedded default and main job.

Renders the synthetic dataset (plain backgrounds, no distractors) into
data_cache/synthetic on first use, fine-tunes the stand-in image CLIP on the training
clips as a video-text CLIP with an ordered read-out (stage 0, the ViFi-CLIP recipe,
``configs/vificlip/synthetic.py:ordered,standins``, into <workdir>/vificlip), then trains
a small CaptionT5 (a temporal transformer and a T5 from scratch) for captions, classes
and tags on CPU, every class equally often. CaptionT5 sees each frame's class token from stage 0's vision tower
and, as one more visual token, stage 0's video embedding (what its zero-shot
classification reads), both computed by stage 0's frozen weights; the stage re-ranks
the candidate captions. It evaluates on the test split and prints the table (CIDEr,
BLEU-4, top-1, macro-F1, tail-class recall, tags; the controls and the attributes the
captions name) beside trivial baselines.

  t5video train --config configs/captiont5/synthetic.py --workdir runs/demo

The stand-in CLIP (``t5video standins``) is built on first use and cached (about 4
minutes once). Until 2026-11-30 the default was a stage-0 CLIP from scratch with mean
pooling and a CaptionT5 that trained its vision tower (``:v4``); its captions named the
colour and no action (docs/results.md).

Variants through the config argument (comma-separated, e.g. ``:nothoughts,frac10``):

* ``runlocal``: a tiny run that finishes in about a minute (smoke test). It keeps the former
  default's design (a tiny stage-0 CLIP from scratch, no video token), which needs no stand-in.
* ``v4``: the default until 2026-11-30, for reproducing docs/results.md's earlier tables: stage 0
  from scratch with mean pooling (2,000 steps), pooled class tokens, the vision tower trained,
  1,200 steps, every clip equally often.
* ``no_videotoken``: no video token (the pooled class tokens alone), the vision tower trained.
* ``train_encoder``: stage 0's encoder trains on with the rest (it collapsed to the prior: docs/results.md).
* ``concepts``: the stage-0 CLIP's top concepts become a thought as well (cross-fitted in two folds,
  so the encoder and video token come from a CLIP that saw half the clips).
* ``concepts=image``: the stand-in image CLIP's top concepts instead, zero-shot (the paper's setting:
  a frozen pretrained CLIP that never saw the clips); stage 0 is the default's. Training draws the
  concepts by similarity (``thoughts.concept_train``), evaluation takes the top 4.
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
* ``vifi_standins``: stage 0 with mean pooling (``configs/vificlip/synthetic.py:mean,standins``, so
  a ``'mean'`` video token) and the T5 (with its tokenizer) from the T5 stand-in: the papers' setting.
* ``ordered_clip``: with ``vifi_standins``, stage 0 keeps the ordered read-out (the default's stage).
* ``grid``: CaptionT5 reads each frame's patch grid (pooled to 4x4 cells, one position-keeping token
  per frame, a temporal transformer over them) instead of the pooled class token; after an ordered
  stage its temporal module starts from the stage's read-out.
* ``videotoken``: the video token (the default; kept so that earlier commands still parse). The
  token is ``'ordered'`` after an ordered stage and ``'mean'`` after a mean one or on an HF image
  CLIP (``:standins,videotoken``); on a tower from scratch (``:noclip``) nothing is frozen.
* ``peft=...`` on the default: the frozen stage-0 weights stay frozen, LoRA/BitFit inside them included.
* ``nothoughts``: thoughts switched off (ablation; the CLIP stage still re-ranks).
* ``frac10``: 10% of the training clips.
* ``temporal=mean|transformer|resampler``: the temporal module.
* ``peft=lora|adapters|prompt|bitfit|last_n``: parameter-efficient tuning at learning rate 5e-3
  (``last_n``: 2e-3, as full fine-tuning); meaningful on a pretrained T5 (``:vifi_standins``) or with
  ``--config.init_from.path=<a trained workdir>``.
* ``textonly``: the text-only control as well (``eval.controls``): the same recipe trained again on
  constant pixels in <workdir>/control_text_only, its metrics in the table as ``control_text_only_*``.
  Off by default: it is a second CaptionT5 training run (about 5 more minutes on 2 cores). The
  other-frames control (one more evaluation pass) is always on.

Hardware: a laptop CPU (2 cores): both stages and evaluation take 7 min 50 s on the quiet reference
machine (2026-11-30, stage 0 at 2,400 steps with scale jitter; the data already rendered, about 1 minute
once), plus about 4 once for the stand-ins. Results (3 seeds, controls,
held-out renderings) and the commands that produce them: docs/results.md, "The demo".
"""

from t5video.recipes import captiont5

STANDINS = "standins:configs/standins/default.py"  # t5video standins' CLIP and T5 (cached)
FROZEN_ENCODER = r"^(clip|ordered|video_projection|grid_norm)/"  # stage 0's weights inside CaptionT5


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
  # Every class equally often in training (the prior is long-tailed: 'moves left' is 129 of the 420
  # training clips, 'moves down' 16): over 3 seeds macro-F1 39.3 against 30.8 and tail recall 28.5
  # against 14.2 with every clip equally often, CIDEr about the same (docs/results.md, "The demo").
  c.data.balance = "class_balanced"
  c.tasks = dict(caption=0.5, classify=0.25, tags=0.25, qa=0.0)
  # task prompt + metadata + subtitle: at most 45 tokens on the demo's clips; ':concepts' and
  # ':refine' add thoughts and take 128
  c.text.max_input_len = 64
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
  # pixels carry"); in the former demo (':v4': a vision tower from the stage-0 CLIP, 1200 steps) they
  # lost on every metric and learned no more of the actions (docs/results.md, "The former demo").
  c.model.temporal = dict(kind="transformer", num_layers=1, num_heads=4)
  c.train.num_steps = 800
  c.train.batch_size = 16
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.train.max_to_keep = 2
  c.optim.learning_rate = 2e-3
  c.optim.warmup_steps = 100
  c.optim.b2 = 0.98
  c.eval.controls = ("other_frames",)  # ':textonly' adds the text-only control (a second training)
  # Stage 0: the stand-in image CLIP fine-tuned on the training clips as a video-text CLIP with
  # an ordered read-out (the ViFi-CLIP recipe) into <workdir>/vificlip. CaptionT5's vision tower
  # and video token come from it, frozen (trained on, they collapsed to the prior:
  # docs/results.md), and it re-ranks the beam's candidate captions. Arg ``concepts`` adds its top
  # concepts as a thought, cross-fitted in two folds.
  # 2,400 steps (about 5 minutes): at 1,200 stage 0 was under-trained (closed top-1 75.0 against 89.4,
  # CaptionT5's top-1 75.8 against 85.2, 3 seeds each; docs/results.md, first section).
  c.thoughts.clip_stage.update(config="configs/vificlip/synthetic.py:ordered,standins", num_steps=2400,
                               folds=1, init_vision=True)
  c.model.video_token = "ordered"  # 'mean' after a mean stage (set at the end)
  c.optim.freeze = FROZEN_ENCODER
  c.thoughts.top_k = 4
  c.eval.rerank = dict(candidates=4, source="beam", weight=5.0, top_p=0.9, temperature=1.0, seed=0)

  if "v4" in args or "runlocal" in args:  # the former default: stage 0 from scratch, mean, trained on
    c.thoughts.clip_stage.config = "configs/vificlip/synthetic.py:mean"
    c.thoughts.clip_stage.num_steps = 2000
    c.model.video_token = ""
    c.optim.freeze = ""
    c.train.num_steps = 1200
    c.text.max_input_len = 128
    c.data.balance = ""
  if "runlocal" in args:
    c.data.num_videos = 90
    c.data.root = "data_cache/synthetic_small"
    c.train.num_steps = 30
    c.train.batch_size = 8
    c.train.log_every = 10
    c.train.checkpoint_every = 15
    c.optim.warmup_steps = 5
    c.eval.max_examples = 16
    c.thoughts.clip_stage.update(config="configs/vificlip/synthetic.py:mean,tiny", num_steps=30, folds=1,
                                 init_vision=False)  # the tiny stage's tower is smaller than model.clip
  if "no_videotoken" in args:
    c.model.video_token = ""
    c.optim.freeze = ""
  if "train_encoder" in args:
    c.optim.freeze = ""
  if "concepts" in args:  # the CLIP's top concepts as a thought too
    c.thoughts.sources = ("concepts",) + tuple(c.thoughts.sources)
    c.text.max_input_len = 128
    if args["concepts"] == "image":  # from the stand-in image CLIP, zero-shot: it never saw the clips
      c.thoughts.concepts_clip = STANDINS
    else:  # from stage 0, cross-fitted: two fold CLIPs (one of them CaptionT5's encoder)
      c.thoughts.clip_stage.folds = 2
  if "noclip" in args:  # no video-text CLIP: vision from scratch, no concept thoughts, no re-ranking
    c.thoughts.sources = tuple(x for x in c.thoughts.sources if x != "concepts")
    c.thoughts.clip_stage.init_vision = False
    c.eval.rerank.candidates = 0
    c.model.video_token = ""
    c.optim.freeze = ""
  if "standins" in args:  # pretrained stand-ins instead of towers from scratch (no CLIP stage)
    c.thoughts.sources = tuple(x for x in c.thoughts.sources if x != "concepts")
    c.thoughts.clip_stage.init_vision = False
    c.eval.rerank.candidates = 0
    c.model.clip_init = STANDINS
    c.model.t5_init = STANDINS
    c.model.video_token = ""
    c.optim.freeze = ""
  if "flatten" in args:  # position-keeping frame tokens (each frame's patch tokens -> one token)
    c.model.visual_tokens = "patches"
    c.model.temporal = dict(kind="transformer", num_layers=1, num_heads=4, frame_tokens="flatten")
  if "refine" in args:  # self-refinement: a first caption is fed back as a 'draft' thought
    c.thoughts.sources = tuple(c.thoughts.sources) + ("draft",)
    c.thoughts.drafts.num_steps = 400 if "runlocal" not in args else 10
    c.eval.refine = True
    c.text.max_input_len = 128
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
  if "videotoken" in args and not c.model.video_token:  # after ':v4' or ':no_videotoken'
    c.model.video_token = "ordered"
    c.optim.freeze = FROZEN_ENCODER
  if c.model.video_token:
    if c.thoughts.clip_stage.init_vision and not c.model.clip_init:
      # the stage's own video embedding: ordered after an ordered stage
      c.model.video_token = "ordered" if ":ordered" in c.thoughts.clip_stage.config else "mean"
    else:  # an HF image CLIP (its image projection, frozen with it) or a tower from scratch (trains)
      c.model.video_token = "mean"
      if not c.model.clip_init:
        c.optim.freeze = ""
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
    # Small added parameters (LoRA, adapters, prompts, BitFit) at 5e-3; last-N trains whole T5 blocks
    # and keeps full fine-tuning's 2e-3 (on the T5 stand-in: CIDEr 85.7 at 2e-3, 35.8 +- 4.4 at 5e-3:
    # docs/results.md).
    if args["peft"] != "last_n":
      c.optim.learning_rate = 5e-3
  return c
