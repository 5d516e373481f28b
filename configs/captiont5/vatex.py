r"""CaptionT5 captioning on VATEX (English captions): CLIP ViT-B/16 + FLAN-T5-base.

Data: ``data.root`` holds the VATEX JSON files (``vatex_training_v1.0.json``,
``vatex_validation_v1.0.json``, ...; ``videoID`` + ``enCap``) and the clips
(``<videoID>.mp4`` under ``data.root`` or its ``videos/``). Checkpoints as in
configs/captiont5/msrvtt.py.

  t5video train --config configs/captiont5/vatex.py --config.data.root=/data/vatex --workdir runs/vatex

Hardware: one TPU v4-8 / v5e-8 host or one 80 GB GPU (global batch 64, 12
frames at 224², bf16); LoRA on T5 from the start (no bridging stage; add
``:stage=1`` for one).
"""

from t5video.recipes import captiont5


# The accelerators this config is checked on (`t5video compile --config configs/captiont5/vatex.py` with no --topology;
# tests/test_recipe_compile.py): arg -> slices.
SLICES = {"": ("v4-8", "v5litepod-8")}


def get_config(arg=None):
  args = dict(a.split("=", 1) if "=" in a else (a, True) for a in (arg or "").split(",") if a)
  c = captiont5.base_config()
  c.data.layout = "vatex"
  c.data.root = ""                   # --config.data.root=/path/to/vatex
  c.data.train_split = "train"
  c.data.eval_split = "val"
  c.data.num_frames = 12
  c.data.size = 224
  c.data.worker_count = 8
  c.tasks = dict(caption=1.0, classify=0.0, tags=0.0, qa=0.0)
  c.thoughts.sources = ()
  captiont5.hf_recipe(c, "clip-vit-base-patch16", "flan-t5-base")
  c.model.temporal = dict(kind="transformer", num_layers=2, num_heads=12)
  c.train.dtype = "bfloat16"
  c.train.batch_size = 64
  c.train.num_steps = 15000
  c.peft.method = "bridge" if args.get("stage") == "1" else "lora"
  c.peft.lora_rank = 16
  c.peft.lora_alpha = 32.0
  c.optim.learning_rate = 3e-4
  c.optim.warmup_steps = 500
  c.eval.beam_size = 4
  return c
