"""Distilling a video captioner into a video-text dual encoder (arXiv 2401.06129, CVPR 2024).

"Distilling Vision-Language Models on Millions of Videos" adapts an image VLM
to video, pseudo-labels many unlabelled clips with several sampled captions
each, and trains a video-text dual encoder contrastively on them. Here, as one
pipeline run by the stage driver (:mod:`t5video.train.stages`):

(a) the teacher: CaptionT5 (:mod:`t5video.recipes.captiont5`) trained on the
    small labelled set, in ``teacher.order`` (visual adaptation with T5 frozen,
    then language adaptation with the vision side frozen: the paper's V→L; or
    L→V, or one joint stage);
(b) pseudo-labelling (:mod:`.pseudo_label`): K nucleus-sampled captions per
    unlabelled clip, resumable, sharded across hosts, written as a
    generic-layout dataset with the teacher's identity and the sampling settings;
(c) the student: ViFi-CLIP's space-time dual encoder (:mod:`t5video.recipes.vificlip`)
    trained with InfoNCE on ``student.sources``: pseudo-captions, the labelled
    captions, noisy alt-text, or a mixture;
(d) its evaluation (:mod:`.evaluate`): zero-shot text-to-video and
    video-to-text retrieval (R@1/5/10, median rank) and zero-shot
    classification on held-out clips, beside chance and the controls.

Files: ``config.py`` (schema, checks), ``data.py`` (the labelled / unlabelled
division, alt-text, the student's records), ``pseudo_label.py`` (stage b and its
command line), ``task.py`` (the student and the run's stages), ``evaluate.py``.
Configs: ``configs/distill/synthetic.py``.
"""

from t5video.recipes.distill.config import ORDERS, SOURCES, base_config, validate
from t5video.recipes.distill.task import DistillTask, teacher_stages

__all__ = ["ORDERS", "SOURCES", "base_config", "validate", "DistillTask", "teacher_stages"]
