"""Workdirs on local disk or on a bucket (``gs://...``): one set of file functions for both.

Orbax writes ``gs://`` paths itself (through TensorStore and etils.epath);
everything else t5video writes into or reads from a workdir (``config.json``,
``metrics.jsonl``, evaluation files, tokenizers, a recipe's own files) goes
through the functions here, which use plain ``os`` / ``open`` for local paths
and ``etils.epath`` (gcsfs, from the ``tpu`` extra) for remote ones.

Bucket semantics to keep in mind:
  * objects cannot be appended to: :class:`AppendFile` keeps a local copy and
    re-uploads it whole after each line;
  * there are no directories: :func:`makedirs` of a remote path does nothing
    visible, and :func:`exists` / :func:`isdir` of a prefix are True only once
    an object lives under it;
  * an upload is atomic (readers see the old object or the new one), so
    :func:`write_text` / :func:`write_bytes` need no temp-and-rename there;
  * readers that need a real local file (sentencepiece, ``from_pretrained``)
    take :func:`local_copy`.

TensorBoard events of a remote workdir are written to a local mirror
(:func:`local_mirror`) and the path is logged.

Example::

  paths.write_text(paths.join(workdir, "config.json"), text)
  with paths.open(paths.join(workdir, "features.npy"), "wb") as f:
    np.save(f, array)
  paths.copy("/tmp/spiece.model", paths.join(workdir, "tokenizer", "spiece.model"))
  names = paths.listdir(paths.join(workdir, "eval"))
"""

from __future__ import annotations

import builtins
import hashlib
import os
import shutil
from typing import IO, Any


def is_remote(path: str) -> bool:
  """True for URLs such as ``gs://bucket/run`` (anything with a scheme)."""
  return "://" in str(path)


def normalize(path: str) -> str:
  """Absolute local paths (``~`` expanded); remote paths unchanged."""
  return str(path) if is_remote(path) else os.path.abspath(os.path.expanduser(str(path)))


def join(*parts: str) -> str:
  """``os.path.join`` for local paths; '/'-joined (slashes between parts collapsed) for URLs."""
  first = str(parts[0])
  if is_remote(first):
    return "/".join([first.rstrip("/")] + [str(p).strip("/") for p in parts[1:]])
  return os.path.join(*parts)


def basename(path: str) -> str:
  return str(path).rstrip("/").rsplit("/", 1)[-1] if is_remote(path) else os.path.basename(path)


def dirname(path: str) -> str:
  if is_remote(path):
    head = str(path).rstrip("/").rsplit("/", 1)[0]
    return head if "://" in head else str(path)  # the bucket root has no parent
  return os.path.dirname(path)


def _epath(path: str):
  from etils import epath  # pylint: disable=g-import-not-at-top
  return epath.Path(str(path))


def makedirs(path: str) -> None:
  """``mkdir -p`` (on a bucket: nothing to create; kept for symmetry)."""
  if is_remote(path):
    _epath(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def exists(path: str) -> bool:
  """A file, a directory, or (remote) a prefix with at least one object under it."""
  if is_remote(path):
    return _epath(path).exists()
  return os.path.exists(path)


def isdir(path: str) -> bool:
  if is_remote(path):
    return _epath(path).is_dir()
  return os.path.isdir(path)


def listdir(path: str) -> list[str]:
  """Sorted names (not paths) of the entries directly in ``path``."""
  if is_remote(path):
    return sorted(p.name for p in _epath(path).iterdir())
  return sorted(os.listdir(path))


def glob(pattern: str) -> list[str]:
  """Sorted paths matching ``pattern`` (``*``, ``?``, ``[..]``, ``**`` for any depth)."""
  if is_remote(pattern):
    from etils.epath import backend  # pylint: disable=g-import-not-at-top
    protocol = str(pattern).split("://", 1)[0] + "://"
    found = backend.fsspec_backend.fs(pattern).glob(str(pattern))
    return sorted(p if "://" in p else protocol + p for p in found)
  import glob as glob_lib  # pylint: disable=g-import-not-at-top
  return sorted(glob_lib.glob(pattern, recursive=True))


def open(path: str, mode: str = "r") -> IO[Any]:  # pylint: disable=redefined-builtin
  """A file object, local or remote: ``'r'``, ``'rb'``, ``'w'``, ``'wb'`` (``'a'`` local only).

  A remote file opened for writing is uploaded when it is closed (use ``with``);
  a local one is written in place (see :func:`write_bytes` for atomic writes).
  """
  if is_remote(path):
    if "a" in mode or "+" in mode:
      raise ValueError(f"{path}: mode {mode!r}: bucket objects cannot be appended to or updated "
                       "(use paths.AppendFile, or rewrite the whole object)")
    return _epath(path).open(mode)
  return builtins.open(path, mode)


def _write_local_atomic(path: str, data, mode: str) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with builtins.open(tmp, mode) as f:
    f.write(data)
  os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
  """Writes ``text`` to ``path``; atomically on local disk (temp + rename) and on buckets."""
  if is_remote(path):
    _epath(path).write_text(text)
    return
  _write_local_atomic(path, text, "w")


def read_text(path: str) -> str:
  if is_remote(path):
    return _epath(path).read_text()
  with builtins.open(path) as f:
    return f.read()


def write_bytes(path: str, data: bytes) -> None:
  """Like :func:`write_text`, for bytes."""
  if is_remote(path):
    _epath(path).write_bytes(data)
    return
  _write_local_atomic(path, data, "wb")


def read_bytes(path: str) -> bytes:
  if is_remote(path):
    return _epath(path).read_bytes()
  with builtins.open(path, "rb") as f:
    return f.read()


def copy(src: str, dst: str, *, overwrite: bool = True) -> str:
  """Copies one file between any two of local disk and buckets; returns ``dst``.

  ``dst`` is the target file's path (not a folder to copy into).
  """
  if not overwrite and exists(dst):
    raise FileExistsError(f"{dst} exists (overwrite=False)")
  if not is_remote(src) and not is_remote(dst):
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    shutil.copyfile(src, dst)
    return dst
  if not is_remote(dst):
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    tmp = f"{dst}.tmp{os.getpid()}"
    with open(src, "rb") as fin, builtins.open(tmp, "wb") as fout:
      shutil.copyfileobj(fin, fout, 8 << 20)
    os.replace(tmp, dst)
    return dst
  # To a bucket: streamed (gcsfs uploads in chunks and finalises on close).
  with open(src, "rb") as fin, open(dst, "wb") as fout:
    shutil.copyfileobj(fin, fout, 8 << 20)
  return dst


def copytree(src: str, dst: str) -> str:
  """Copies the files below folder ``src`` to ``dst`` (same relative names); returns ``dst``."""
  if not isdir(src):
    raise FileNotFoundError(f"{src} is not a directory")
  for name in listdir(src):
    s, d = join(src, name), join(dst, name)
    if isdir(s):
      copytree(s, d)
    else:
      copy(s, d)
  return dst


def remove(path: str) -> None:
  """Deletes one file (object)."""
  if is_remote(path):
    _epath(path).unlink()
  else:
    os.remove(path)


def rmtree(path: str) -> None:
  """Deletes a folder (every object under a prefix); a missing one is fine."""
  if is_remote(path):
    p = _epath(path)
    if p.exists():
      p.rmtree()
  else:
    shutil.rmtree(path, ignore_errors=True)


def local_mirror(path: str) -> str:
  """A local folder standing in for a remote workdir (itself when local)."""
  if not is_remote(path):
    return path
  digest = hashlib.sha1(path.encode()).hexdigest()[:12]
  name = path.split("://", 1)[1].strip("/").replace("/", "_")[-60:]
  out = os.path.join(os.path.expanduser("~"), ".cache", "t5video", "remote", f"{name}-{digest}")
  os.makedirs(out, exist_ok=True)
  return out


def local_copy(path: str) -> str:
  """A local path holding ``path``'s content: ``path`` itself when local.

  A remote file or folder is downloaded (again, each call) below
  :func:`local_mirror` of its parent, for readers that need a real file:
  ``sentencepiece``, ``transformers``' ``from_pretrained``, ``np.load(mmap_mode=...)``.
  """
  if not is_remote(path):
    return path
  target = os.path.join(local_mirror(dirname(path)), basename(path))
  if isdir(path):
    shutil.rmtree(target, ignore_errors=True)
    copytree(path, target)
  else:
    copy(path, target)
  return target


class AppendFile:
  """Line-appending to a local file, or to a remote one through a local copy."""

  def __init__(self, path: str):
    self.path = path
    self.remote = is_remote(path)
    if self.remote:
      self._local = os.path.join(local_mirror(os.path.dirname(path)), os.path.basename(path))
      # Continue a resumed run's file.
      text = read_text(path) if exists(path) else ""
      with builtins.open(self._local, "w") as f:
        f.write(text)
    else:
      self._local = path
    self._f = builtins.open(self._local, "a", buffering=1)

  def write(self, line: str) -> None:
    self._f.write(line)
    if self.remote:
      self._f.flush()
      write_text(self.path, read_text(self._local))

  def close(self) -> None:
    self._f.close()
