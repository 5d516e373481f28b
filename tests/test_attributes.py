"""The caption attribute parser (t5video.evaluate.attributes) on hand-written captions and on
every reference caption the synthetic generator writes, and the accuracies it gives."""

from __future__ import annotations

import pytest

from t5video.data import synthetic
from t5video.evaluate import attributes


@pytest.fixture(scope="module")
def vocab():
  return attributes.synthetic_vocabulary()


@pytest.mark.parametrize("caption, want", [
    ("a small red circle moves to the left on a plain background",
     {"size": "small", "colour": "red", "shape": "circle", "actions": ["moves left"]}),
    # Synonyms; an unstated size is the unstated one; 'polka-dot' names no circle.
    ("there is a crimson plus sign that drifts right over a polka-dot background",
     {"size": "medium", "colour": "red", "shape": "cross", "actions": ["moves right"]}),
    ("first the big blue hoop grows larger, then it becomes smaller",
     {"size": "large", "colour": "blue", "shape": "ring", "actions": ["grows", "shrinks"]}),
    # The object is the first noun phrase (not the distractor, not the colours of the change).
    ("a golden star changes colour from yellow to purple while a large pink square stays still",
     {"size": "medium", "colour": "yellow", "shape": "star", "actions": ["changes colour"]}),
    ("a tiny cyan diamond rises", {"size": "small", "colour": "cyan", "shape": "diamond",
                                   "actions": ["moves up"]}),
    ("a green star disappears", {"size": "medium", "colour": "green", "shape": "star",
                                 "actions": ["disappears"]}),
    ("a purple hexagon fades into view and then fades away",
     {"size": "medium", "colour": "purple", "shape": "hexagon", "actions": ["appears", "disappears"]}),
    # No noun phrase: each attribute's first word; nothing named at all: None.
    ("something red spins clockwise", {"size": "medium", "colour": "red", "shape": None,
                                       "actions": ["spins"]}),
    ("", {"size": None, "colour": None, "shape": None, "actions": []}),
])
def test_parse_hand_written_captions(vocab, caption, want):
  assert vocab.parse(caption) == want


def test_every_reference_caption_parses_to_its_clips_truth(vocab):
  """The generator's own captions (textured scenes, distractors, every class) read back as the
  truth it writes to the annotations (``attributes``)."""
  specs = synthetic.sample_specs(150, seed=3)
  for spec in specs:
    truth = synthetic.key_attributes(spec)
    assert synthetic._generic_row(spec)["attributes"] == truth
    for caption in spec.captions:
      got = vocab.parse(caption)
      assert got["actions"] == truth["actions"], caption
      assert (got["shape"], got["colour"]) == (truth["shape"], truth["colour"]), caption
      assert truth["size"] is None or got["size"] == truth["size"], caption


def test_accuracies_per_attribute_and_order_pair(vocab):
  truths = [
      {"shape": "circle", "colour": "red", "size": "small", "actions": ["moves left"]},
      {"shape": "ring", "colour": "blue", "size": None, "actions": ["grows", "shrinks"]},
      {"shape": "star", "colour": "green", "size": "medium", "actions": ["appears"]},
      {"shape": "square", "colour": "pink", "size": "large", "actions": ["moves left", "disappears"]},
  ]
  captions = [
      "a small red circle moves to the right",   # the direction wrong
      "a blue ring shrinks and then grows",       # both scale actions, the order wrong
      "a green star appears",                      # all right ('medium' unstated)
      "a large pink box slides leftwards and then vanishes",  # all right
  ]
  m = attributes.attribute_accuracy(captions, truths, vocab)
  assert m == {
      "attribute_size_accuracy": 1.0, "attribute_colour_accuracy": 1.0,
      "attribute_shape_accuracy": 1.0, "attribute_object_accuracy": 1.0,
      "attribute_action_accuracy": 0.5,
      "attribute_left_right_accuracy": 0.5,          # clips 1 and 4
      "attribute_grows_shrinks_accuracy": 0.0,       # clip 2
      "attribute_appears_disappears_accuracy": 1.0,  # clips 3 and 4
  }  # no clip moves up or down: no up_down key
  wrong = attributes.attribute_accuracy(["a big yellow triangle sinks"] * 4, truths, vocab)
  assert wrong["attribute_shape_accuracy"] == 0.0 and wrong["attribute_action_accuracy"] == 0.0
  assert attributes.attribute_accuracy(captions, [None] * 4, vocab) == {}


def test_pairs_and_their_names(vocab):
  assert [attributes.pair_name(p) for p in vocab.pairs] == [
      "left_right", "up_down", "appears_disappears", "grows_shrinks"]
