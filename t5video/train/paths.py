"""Workdirs on local disk or on a bucket (``gs://...``).

Orbax writes ``gs://`` paths itself; everything else t5video writes into a
workdir (``config.json``, ``metrics.jsonl``, evaluation files) goes through
:func:`write_text` / :func:`open_read`, which use ``etils.epath`` for remote
paths (install the ``tpu`` extra, which adds ``gcsfs``). Bucket objects cannot
be appended to, so :class:`AppendFile` keeps a local copy and re-uploads it
whole; TensorBoard events of a remote workdir are written to a local mirror
(:func:`local_mirror`) and the path is logged.
"""

from __future__ import annotations

import hashlib
import os


def is_remote(path: str) -> bool:
  """True for URLs such as ``gs://bucket/run`` (anything with a scheme)."""
  return "://" in str(path)


def normalize(path: str) -> str:
  """Absolute local paths (``~`` expanded); remote paths unchanged."""
  return str(path) if is_remote(path) else os.path.abspath(os.path.expanduser(str(path)))


def join(*parts: str) -> str:
  first = str(parts[0])
  if is_remote(first):
    return "/".join([first.rstrip("/")] + [str(p).strip("/") for p in parts[1:]])
  return os.path.join(*parts)


def makedirs(path: str) -> None:
  if is_remote(path):
    from etils import epath
    epath.Path(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def exists(path: str) -> bool:
  if is_remote(path):
    from etils import epath
    return epath.Path(path).exists()
  return os.path.exists(path)


def write_text(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` atomically on local disk (temp + rename)."""
  if is_remote(path):
    from etils import epath
    epath.Path(path).write_text(text)
    return
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def read_text(path: str) -> str:
  if is_remote(path):
    from etils import epath
    return epath.Path(path).read_text()
  with open(path) as f:
    return f.read()


def local_mirror(path: str) -> str:
  """A local folder standing in for a remote workdir (itself when local)."""
  if not is_remote(path):
    return path
  digest = hashlib.sha1(path.encode()).hexdigest()[:12]
  name = path.split("://", 1)[1].strip("/").replace("/", "_")[-60:]
  out = os.path.join(os.path.expanduser("~"), ".cache", "t5video", "remote", f"{name}-{digest}")
  os.makedirs(out, exist_ok=True)
  return out


class AppendFile:
  """Line-appending to a local file, or to a remote one through a local copy."""

  def __init__(self, path: str):
    self.path = path
    self.remote = is_remote(path)
    if self.remote:
      self._local = os.path.join(local_mirror(os.path.dirname(path)), os.path.basename(path))
      # Continue a resumed run's file.
      text = read_text(path) if exists(path) else ""
      with open(self._local, "w") as f:
        f.write(text)
    else:
      self._local = path
    self._f = open(self._local, "a", buffering=1)

  def write(self, line: str) -> None:
    self._f.write(line)
    if self.remote:
      self._f.flush()
      write_text(self.path, read_text(self._local))

  def close(self) -> None:
    self._f.close()
