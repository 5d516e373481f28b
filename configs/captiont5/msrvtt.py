r"""CaptionT5 captioning on MSR-VTT: CLIP ViT-B/16 + FLAN-T5-base, two stages.

Data: the published MSR-VTT layout under ``data.root``
(``train_val_videodatainfo.json``, ``test_videodatainfo.json``, ``TrainValVideo/``,
``TestVideo/``). Checkpoints: local HF snapshots of ``openai/clip-vit-base-patch16``
and ``google/flan-t5-base`` in ``$T5VIDEO_CHECKPOINTS`` (default
``~/.cache/t5video/checkpoints``) as ``clip-vit-base-patch16/`` and
``flan-t5-base/``, or ``--config.model.clip_init`` / ``--config.model.t5_init``.

Stage 1 (bridging: only the temporal module and projection train):

  t5video train --config configs/captiont5/msrvtt.py:stage=1 --config.data.root=/data/msrvtt --workdir runs/msrvtt_s1

Stage 2 (LoRA on T5 from stage 1's checkpoint):

  t5video train --config configs/captiont5/msrvtt.py:stage=2 --config.data.root=/data/msrvtt --config.init_from.path=runs/msrvtt_s1 --workdir runs/msrvtt_s2

Hardware: one TPU v4-8 / v5e-8 host or one 80 GB GPU (global batch 64, 12
frames at 224², bf16 compute); about 3 hours per stage on a v4-8. On CPU it
runs but is impractically slow. Thoughts: MSR-VTT has no metadata; set
``thoughts.clip_workdir`` to a ViFi-CLIP run for CLIP-guided concepts.
"""

from t5video.recipes import captiont5


# The accelerators this config is checked on (`t5video compile --config configs/captiont5/msrvtt.py` with no --topology;
# tests/test_recipe_compile.py): arg -> slices.
SLICES = {"": ("v4-8", "v5litepod-8"), "stage=1": ("v4-8", "v5litepod-8"), "stage=2": ("v4-8", "v5litepod-8")}


def get_config(arg=None):
  args = dict(a.split("=", 1) if "=" in a else (a, True) for a in (arg or "").split(",") if a)
  stage = int(args.get("stage", 2))
  c = captiont5.base_config()
  c.data.layout = "msrvtt"
  c.data.root = ""                   # --config.data.root=/path/to/msrvtt
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.num_frames = 12
  c.data.size = 224
  c.data.worker_count = 8
  c.tasks = dict(caption=1.0, classify=0.0, tags=0.0, qa=0.0)
  c.thoughts.sources = ()
  c.text.max_input_len = 48
  c.text.max_target_len = 32
  captiont5.hf_recipe(c, "clip-vit-base-patch16", "flan-t5-base")
  c.model.temporal = dict(kind="transformer", num_layers=2, num_heads=12)
  c.train.dtype = "bfloat16"
  c.train.batch_size = 64
  c.eval.beam_size = 4
  if stage == 1:
    c.peft.method = "bridge"
    c.train.num_steps = 5000
    c.optim.learning_rate = 1e-4
  else:
    c.peft.method = "lora"
    c.peft.lora_rank = 16
    c.peft.lora_alpha = 32.0
    c.train.num_steps = 10000
    c.optim.learning_rate = 3e-4
  c.optim.warmup_steps = 500
  return c
