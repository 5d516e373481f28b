"""The distillation recipe's task: the student (a ViFi-CLIP dual encoder trained on captions)
and the run's preparation (the data division and the stages before it).

:meth:`DistillTask.prepare` divides the data (:mod:`.data`), resolves every path
into the run config and lists the stages, so that ``t5video train`` runs the
whole pipeline and resumes it at the first unfinished stage:

1. ``teacher_*``: the CaptionT5 teacher trained on the labelled clips
   (``teacher.order``: visual then language adaptation, the other way round,
   or one joint stage), unless ``teacher.workdir`` names a finished one or no
   source needs it;
2. ``pseudo_label``: K captions per unlabelled clip (:mod:`.pseudo_label`), unless
   ``pseudo.dir`` names a finished pseudo-labelled dataset;
3. ``control_text_only`` when ``eval.controls`` asks for it;
4. the run itself: the student, then its evaluation (:mod:`.evaluate`).

The student is ViFi-CLIP's task with other training records (those of
``student.sources``, labels dropped: it learns from text alone) and a
SentencePiece tokenizer trained on the text available before any stage runs
(the labelled captions, the alt-text, the class prompts); the teacher's
captions are made of the words it was trained on, the labelled captions.
"""

from __future__ import annotations

import os

import ml_collections

from t5video import config as config_lib
from t5video.data.records import VideoRecord
from t5video.recipes.captiont5 import data as captiont5_data
from t5video.recipes.distill import config as cfg
from t5video.recipes.distill import data as data_lib
from t5video.recipes.vificlip import config as vificlip_config
from t5video.recipes.vificlip.task import ViFiCLIPTask
from t5video.train import paths

PSEUDO_STAGE = "pseudo_label"
TEACHER_DIR = "teacher"  # <workdir>/teacher_<stage>/ hold the teacher's stages


def teacher_stages(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """The CaptionT5 stages that train the teacher on the labelled clips, in ``teacher.order``.

  Each stage is ``teacher.config`` on ``<student.data_dir>/labelled.jsonl`` with
  ``teacher.overrides``; in 'vl' / 'lv' the first trains only its half of the
  params (visual: the CLIP tower, temporal module and projection; language:
  T5) and the second starts from it (``init_from``) and trains the other half.
  """
  t, d = config.teacher, config.data
  data = {"layout": "generic", "root": os.path.abspath(d.root),
          "annotations": os.path.join(config.student.data_dir, data_lib.LABELLED),
          "train_split": "train", "eval_split": config.eval.split}
  common = {"seed": int(config.seed), "data": data, "stages": ()}
  if float(t.qa_weight):
    # every stage answers the QA pairs in its evaluation, the one that trains captions alone too, so
    # that the teacher is measured on QA whichever order ends it
    common["eval"] = {"qa": "true"}
  # Captions alone in visual adaptation (the paper's alt-text stage); the teacher config's tasks
  # with video QA (teacher.qa_weight) in language adaptation, the instruction-data stage.
  base_tasks = dict(config_lib.load_config_file(t.config).tasks.to_dict())
  base_tasks.update(vificlip_config.as_dict(vificlip_config.as_dict(t.overrides).get("tasks")))
  qa_w = float(t.qa_weight)
  language_tasks = {k: (qa_w if k == "qa" else float(v) * (1.0 - qa_w)) for k, v in {**base_tasks, "qa": 0}.items()}
  visual_tasks = {k: (1.0 if k == "caption" else 0.0) for k in language_tasks}
  visual, language = vificlip_config.as_dict(t.visual_overrides), vificlip_config.as_dict(t.language_overrides)
  halves = {"v": ("visual", cfg.VISUAL_PARAMS, int(t.visual_steps), visual_tasks, visual),
            "l": ("language", cfg.LANGUAGE_PARAMS, int(t.language_steps), language_tasks, language)}
  if t.order == "joint":
    plan = [("joint", "", int(t.visual_steps) + int(t.language_steps), language_tasks, language)]
  else:
    plan = [halves[h] for h in t.order]
  # A teacher config with a video-text CLIP stage (CaptionT5's thoughts.clip_stage: the vision tower
  # and video token from ViFi-CLIP on the labelled clips) trains that stage inside its first stage;
  # the later stages read the same one (cross-fitted folds: each stage trains its own, as one run would).
  clip = stage_config_of(t.config, vificlip_config.as_dict(t.overrides)).thoughts
  shared_clip = bool(clip.clip_stage.config) and not clip.clip_workdir and int(clip.clip_stage.folds) == 1
  out, previous = [], ""
  for name, trainable, steps, tasks, own in plan:
    overrides = _deep_merge(common, vificlip_config.as_dict(t.overrides))
    overrides = _deep_merge(overrides, {"optim": {"trainable": trainable}, "tasks": tasks})
    overrides = _deep_merge(overrides, own)
    if steps:
      overrides = _deep_merge(overrides, {"train": {"num_steps": steps}})
    if previous:
      # Every param from the previous stage (HF weights, when the config names them, load first
      # and give the sizes and the tokenizer; the checkpoint then replaces them).
      overrides = _deep_merge(overrides, {"init_from": {"path": previous, "regex": ".*"}})
      if shared_clip:
        overrides = _deep_merge(overrides, {"thoughts": {
            "clip_workdir": os.path.join(previous, captiont5_data.CLIP_STAGE_DIR)}})
    stage_dir = f"{TEACHER_DIR}_{name}"
    out.append({"name": stage_dir, "config": t.config, "workdir": stage_dir, "overrides": overrides})
    previous = os.path.join(workdir, stage_dir)
  return out


def stage_config_of(config_file: str, overrides: dict) -> ml_collections.ConfigDict:
  """``config_file`` with ``overrides`` applied, CaptionT5's defaults filled in."""
  from t5video.recipes.captiont5 import config as captiont5_config  # pylint: disable=g-import-not-at-top
  from t5video.train import stages  # pylint: disable=g-import-not-at-top
  c = stages.stage_config({"config": config_file, "overrides": overrides})
  config_lib.fill_defaults(c, captiont5_config.base_config())
  return c


def teacher_sees_through_clip_stage(t: ml_collections.ConfigDict) -> bool:
  """Whether the teacher's vision tower comes from its own video-text CLIP stage
  (``thoughts.clip_stage.init_vision``), not from an HF CLIP directory."""
  c = stage_config_of(t.config, vificlip_config.as_dict(t.overrides))
  return bool(c.thoughts.clip_stage.config and c.thoughts.clip_stage.init_vision and not c.model.clip_init)


def _deep_merge(a: dict, b: dict) -> dict:
  out = dict(a)
  for k, v in b.items():
    if isinstance(v, dict) and isinstance(out.get(k), dict) and v:
      out[k] = _deep_merge(out[k], v)
    else:
      out[k] = v
  return out


def ensure_standins(standins: ml_collections.ConfigDict) -> str:
  """``standins.dir`` (absolute), holding the stand-ins' ``clip/`` and ``t5/`` (built from
  ``standins.config`` and copied there when absent; the build is cached)."""
  out = os.path.abspath(standins.dir)
  if all(os.path.isfile(os.path.join(out, p, "config.json")) for p in ("clip", "t5")):
    return out
  from t5video.recipes import standins as standins_lib  # pylint: disable=g-import-not-at-top
  print(f"building the stand-ins ({standins.config}) for {out}", flush=True)
  return standins_lib.write_out(standins_lib.build(config_lib.load_config_file(standins.config)), out)


# The CLIP config fields a student copies from an HF directory (not dtype, remat, LoRA).
_NOT_SIZES = ("dtype", "param_dtype", "remat", "lora")


def student_from_hf(config: ml_collections.ConfigDict, clip_dir: str) -> None:
  """Points the student at the HF CLIP in ``clip_dir``: its tower sizes, its tokenizer, its
  weights (``init_from``), in place."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from t5video.models import clip as clip_lib  # pylint: disable=g-import-not-at-top
  from t5video.models import hf  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(os.path.join(clip_dir, "config.json")):
    raise FileNotFoundError(f"student.clip_init={clip_dir!r}: not a Hugging Face CLIP directory (no config.json)")
  hf_config = hf.read_hf_config(clip_dir)
  for key, cls in (("vision", clip_lib.CLIPVisionConfig), ("text", clip_lib.CLIPTextConfig)):
    tower = cls.from_hf(hf_config)
    config.model[key] = {f.name: getattr(tower, f.name) for f in dataclasses.fields(tower)
                         if f.name not in _NOT_SIZES}
  config.model.projection_dim = int(hf_config.get("projection_dim", config.model.projection_dim))
  config.model.tokenizer = clip_dir
  config.model.text_len = min(int(config.model.text_len), int(config.model.text.max_position_embeddings))
  if not config.init_from.path:
    config.init_from.path, config.init_from.regex = clip_dir, ".*"
  if int(config.data.size) != int(config.model.vision.image_size):
    print(f"student: frames of {config.data.size}px into a CLIP trained on {config.model.vision.image_size}px "
          "(position embeddings interpolated)", flush=True)


class DistillTask(ViFiCLIPTask):
  """The student of the distillation recipe (see the module docstring)."""

  CONFIG_MODULE = cfg  # the schema: base_config(), validate(), OPEN_SECTIONS

  def __init__(self, config, tokenizer_path=None, classes=None, *, shapes_only: bool = False):
    config_lib.fill_defaults(config, cfg.base_config())
    cfg.validate(config)
    super().__init__(config, tokenizer_path=tokenizer_path, classes=classes, shapes_only=shapes_only)

  # ---- the run's preparation --------------------------------------------------------
  @classmethod
  def prepare(cls, config, workdir: str) -> ml_collections.ConfigDict:
    """Divides the data, resolves the paths and lists the stages (see the module docstring)."""
    from t5video.recipes.vificlip import data as vificlip_data  # pylint: disable=g-import-not-at-top
    from t5video.evaluate import controls  # pylint: disable=g-import-not-at-top
    config = ml_collections.ConfigDict(config.to_dict())
    config_lib.fill_defaults(config, cfg.base_config())
    workdir = paths.normalize(workdir)
    s, t, p = config.student, config.teacher, config.pseudo
    with config.unlocked():
      config.data.root = os.path.abspath(config.data.root) if config.data.root else ""
      s.data_dir = os.path.abspath(s.data_dir) if s.data_dir else os.path.join(workdir, "data")
      if config.standins.dir:
        standins_dir = ensure_standins(config.standins)
        config.standins.dir = standins_dir
        s.clip_init = s.clip_init or os.path.join(standins_dir, "clip")
        model = vificlip_config.as_dict(vificlip_config.as_dict(t.overrides).get("model"))
        inits = {"t5_init": model.get("t5_init") or os.path.join(standins_dir, "t5")}
        if t.config and not teacher_sees_through_clip_stage(t):
          # (a teacher whose tower comes from its CLIP stage reaches the stand-in CLIP through it)
          inits["clip_init"] = model.get("clip_init") or os.path.join(standins_dir, "clip")
        t.overrides = _deep_merge(vificlip_config.as_dict(t.overrides), {"model": inits})
      if s.clip_init:
        student_from_hf(config, os.path.abspath(s.clip_init))
      if not config.model.tokenizer:
        config.model.tokenizer = os.path.join(workdir, "assets", "student_spiece.model")
      needs_pseudo = "pseudo" in s.sources
      stages = list(config.stages)
      if needs_pseudo and not p.dir:
        if not t.workdir:
          if not t.config:
            raise ValueError("student.sources has 'pseudo' and no teacher: set teacher.config (a CaptionT5 "
                             "config to train one here), teacher.workdir or pseudo.dir")
          teacher = teacher_stages(config, workdir)
          stages += teacher
          t.workdir = os.path.join(workdir, teacher[-1]["workdir"])
        p.dir = os.path.join(workdir, PSEUDO_STAGE)
        stages.append({"name": PSEUDO_STAGE, "config": "", "workdir": PSEUDO_STAGE,
                       "run": "t5video.recipes.distill.pseudo_label:run_stage",
                       "overrides": {"stages": ()}})
      elif p.dir:
        p.dir = os.path.abspath(p.dir)
        if needs_pseudo and not os.path.isfile(os.path.join(p.dir, data_lib.PSEUDO)):
          raise FileNotFoundError(f"pseudo.dir={p.dir!r} holds no {data_lib.PSEUDO}: not a finished "
                                  "pseudo-labelled dataset (leave pseudo.dir empty to make one here)")
      if "text_only" in config.eval.controls and not any(
          dict(x).get("name") == controls.TEXT_ONLY_STAGE for x in stages):
        stages.append(controls.text_only_stage())
      config.stages = tuple(stages)
    records = {}

    def records_fn(split, allow_empty):
      if split not in records:
        records[split] = vificlip_data.read_records(config.data, split, allow_empty)
      return records[split]

    os.makedirs(s.data_dir, exist_ok=True)
    counts = data_lib.divide(config, records_fn, s.data_dir)
    print(f"distill data in {s.data_dir}: {counts['labelled']} labelled and {counts['unlabelled']} unlabelled "
          f"training clips", flush=True)
    os.makedirs(os.path.dirname(config.model.tokenizer), exist_ok=True)
    # The student's assets (tokenizer, class lists) once; ViFi-CLIP's prepare writes them.
    return super().prepare(config, workdir)

  # ---- data -------------------------------------------------------------------------
  def train_records(self) -> list[VideoRecord]:
    """The records of ``student.sources`` (:func:`.data.student_records`), a seeded
    ``data.train_fraction`` of them."""
    from t5video.data.records import fraction_subset  # pylint: disable=g-import-not-at-top
    records = data_lib.student_records(self.config)
    records = fraction_subset(records, float(self.config.data.train_fraction), int(self.config.seed))
    if not records:
      raise ValueError(f"student.sources={tuple(self.config.student.sources)}: no training clip has a caption")
    return records

  def _tokenizer_path(self) -> str:
    """A SentencePiece model trained on the text there is before any stage: the labelled
    captions, the alt-text and the class prompts (an HF tokenizer directory is used as is)."""
    m = self.config.model
    if m.tokenizer.endswith(".model") and not paths.exists(m.tokenizer):
      from t5video.data.tokenizer import train_sentencepiece  # pylint: disable=g-import-not-at-top
      d = self.config.student.data_dir
      texts = [c for name in (data_lib.LABELLED, data_lib.ALT_TEXT)
               for r in data_lib.read(os.path.join(d, name)) for c in r.captions]
      names = list(self.train_classes) + list(self.novel_classes)
      texts += names + [m.prompt_template.format(c) for c in names]
      if not texts:
        raise ValueError(f"cannot train the SentencePiece model {m.tokenizer}: no text in {d}")
      train_sentencepiece(texts, m.tokenizer, vocab_size=int(m.sentencepiece_vocab))
    return super()._tokenizer_path()

  # ---- evaluation -------------------------------------------------------------------
  def evaluate(self, params, *, step: int, workdir: str) -> dict[str, float]:
    """ViFi-CLIP's zero-shot and retrieval protocols, renamed (:func:`.evaluate.run`)."""
    del step
    import jax  # pylint: disable=g-import-not-at-top
    from t5video.evaluate import hosts  # pylint: disable=g-import-not-at-top
    from t5video.recipes.distill import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
    from t5video.recipes.vificlip.task import is_workdir, save_workdir_assets  # pylint: disable=g-import-not-at-top
    if workdir and jax.process_index() == 0 and not is_workdir(workdir):
      save_workdir_assets(self, workdir)
    metrics = evaluate_lib.run(self, jax.device_get(hosts.local_params(params)), workdir=workdir)
    if jax.process_index() == 0:
      print(evaluate_lib.format_table(metrics, self.config), flush=True)
    return metrics

