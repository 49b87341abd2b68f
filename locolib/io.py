"""Files that survive an interrupt (every write goes to a temporary file and is renamed), and
reading them back: JSON, hashes."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never half.

    The file gets the permissions the user's umask gives a new file (``tempfile.mkstemp`` would
    make it private, 0600, so that a group sharing a results folder could not read it). (Chapters 04-07)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:  # a full disk: say which file
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented, key-sorted standard JSON (NaN and infinity, which
    JSON has not, are a ValueError). (Chapters 04-07)"""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)
    return atomic_write_bytes(path, (text + "\n").encode())


def loads(text: str) -> Any:
    """``json.loads``; JSON nested too deeply for Python's parser is a ValueError like any other
    damaged JSON (``json`` itself raises RecursionError). (Chapters 04-07)"""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None


def read_json(path: str | Path) -> Any:
    """The JSON document at ``path`` (:func:`loads`). (Chapters 04-07)"""
    with open(path) as f:
        return loads(f.read())


def sha256(path: str | Path) -> str:
    """The SHA-256 of a file, as hex. (Chapter 07)"""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
