r"""CaptionT5 as a classifier on a Kinetics-style CSV dataset (class names are the answers).

Data: ``data.root`` holds ``train.csv`` / ``validate.csv`` (``label,youtube_id,
time_start,time_end,split``) and the clips in the common download layout
(``<youtube_id>_<start:06d>_<end:06d>.mp4``, optionally under ``<label>/`` or
``<split>/``). Evaluation reports top-1/top-5 by rank classification (every
class name scored by the decoder) and by free generation, macro-F1 and
head/tail recall. Checkpoints as in configs/captiont5/msrvtt.py.

  t5video train --config configs/captiont5/kinetics.py --config.data.root=/data/kinetics400 --workdir runs/k400

Hardware: a TPU v4-32 slice (global batch 256, 8 frames at 224², bf16) for
Kinetics-400; a single v4-8 host for smaller Kinetics-style sets.
"""

from t5video.recipes import captiont5


# The accelerators this config is checked on (`t5video compile --config configs/captiont5/kinetics.py` with no --topology;
# tests/test_recipe_compile.py): arg -> slices.
SLICES = {"": ("v4-32",)}


def get_config(arg=None):
  del arg
  c = captiont5.base_config()
  c.data.layout = "kinetics"
  c.data.root = ""                   # --config.data.root=/path/to/kinetics
  c.data.train_split = "train"
  c.data.eval_split = "val"
  c.data.num_frames = 8
  c.data.size = 224
  c.data.worker_count = 16
  c.data.balance = "class_balanced"
  c.tasks = dict(caption=0.0, classify=1.0, tags=0.0, qa=0.0)
  c.thoughts.sources = ()
  c.text.max_input_len = 16
  c.text.max_target_len = 16
  captiont5.hf_recipe(c, "clip-vit-base-patch16", "flan-t5-base")
  c.model.temporal = dict(kind="transformer", num_layers=2, num_heads=12)
  c.peft.method = "lora"
  c.train.dtype = "bfloat16"
  c.train.batch_size = 256
  c.train.num_steps = 20000
  c.optim.learning_rate = 3e-4
  c.optim.warmup_steps = 1000
  c.eval.max_examples = 0
  return c
