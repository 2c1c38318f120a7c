"""Checkpoints: a training state saved as ``.npz`` (arrays) plus JSON (everything else).

Layout of a checkpoint folder (``RUN/checkpoint/``)::

    checkpoint.json             format, version, model shapes, the scalar state,
                                the name, size and SHA-256 of the arrays file,
                                and a SHA-256 of this document itself
    state-00001000-1a2b3c4d.npz the arrays (parameters, optimiser buffers, ...)

Saving writes a *new* arrays file (a fresh name every time), then replaces
``checkpoint.json`` atomically, then deletes the arrays files that
``checkpoint.json`` no longer names. Every file goes through a temporary file,
``fsync`` and ``os.replace``. So whenever the process is killed,
``checkpoint.json`` names a complete arrays file whose checksum it holds: the
last good checkpoint stays readable.

Loading checks, before returning anything: the document parses and its own
checksum matches; the format and version are this module's; the arrays file
exists, has the recorded size and checksum; every array loads with
``allow_pickle=False``; the recorded model shapes are the expected ones. Any
failure raises :class:`~tpgraph.errors.CheckpointError` saying which check
failed. No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import CheckpointError
from .records import atomic_write_bytes, atomic_write_text, npz_bytes

__all__ = ["FORMAT", "VERSION", "save_checkpoint", "load_checkpoint", "has_checkpoint", "checkpoint_info"]

#: The ``format`` field of every checkpoint document.
FORMAT = "tpgraph-checkpoint"
#: The layout version this code writes and reads; bump it when the state's layout changes.
VERSION = 1
INDEX = "checkpoint.json"


def _canonical(doc: Mapping) -> bytes:
    """The document as canonical JSON bytes (sorted keys, no spaces), for its checksum."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=True).encode("utf-8")


def _shapes(shapes: Mapping[str, tuple]) -> dict[str, list[int]]:
    return {k: [int(n) for n in v] for k, v in shapes.items()}


def has_checkpoint(folder: str | Path) -> bool:
    """Whether ``folder`` holds a checkpoint index (it may still be unreadable)."""
    return (Path(folder) / INDEX).is_file()


def save_checkpoint(folder: str | Path, *, arrays: Mapping[str, np.ndarray], state: Mapping[str, Any],
                    shapes: Mapping[str, tuple], batch: int) -> Path:
    """Save a checkpoint atomically (see the module docstring); returns the index's path.

    Parameters
    ----------
    folder : path
        The checkpoint folder (created if missing).
    arrays : mapping of str to ndarray
        Numeric arrays (no object arrays).
    state : mapping
        JSON-able scalars, lists and dicts (Python ints of any size are exact).
    shapes : mapping of str to tuple
        The model's parameter shapes, checked again when loading.
    batch : int
        The training batch the state belongs to (part of the arrays file's name).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = npz_bytes(arrays)
    name = f"state-{int(batch):08d}-{uuid.uuid4().hex[:8]}.npz"
    atomic_write_bytes(folder / name, data)
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "batch": int(batch),
        "shapes": _shapes(shapes),
        "arrays_file": name,
        "arrays_bytes": len(data),
        "arrays_sha256": hashlib.sha256(data).hexdigest(),
        "state": state,
    }
    doc["document_sha256"] = hashlib.sha256(_canonical(doc)).hexdigest()
    atomic_write_text(folder / INDEX, json.dumps(doc, indent=1, allow_nan=True) + "\n")
    for old in folder.glob("state-*.npz"):
        if old.name != name:
            try:
                old.unlink()
            except OSError:
                pass
    for tmp in folder.glob(".*.tmp"):  # leftovers of writes killed half-way
        try:
            tmp.unlink()
        except OSError:
            pass
    return folder / INDEX


def _read_index(folder: Path) -> dict:
    path = folder / INDEX
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint in {str(folder)!r} (missing {INDEX})") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {exc}") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupted or truncated (not valid JSON: {exc})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} is not a checkpoint document")
    if doc.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a tpgraph checkpoint (format {doc.get('format')!r}, "
                              f"expected {FORMAT!r})")
    version = doc.get("version")
    if version != VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r} has format version {version!r}; this tpgraph reads "
                              f"version {VERSION} only")
    claimed = doc.pop("document_sha256", None)
    if not isinstance(claimed, str) or hashlib.sha256(_canonical(doc)).hexdigest() != claimed:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupted: its checksum does not match its content")
    for key, kind in (("batch", int), ("shapes", dict), ("arrays_file", str), ("arrays_bytes", int),
                      ("arrays_sha256", str), ("state", dict)):
        if not isinstance(doc.get(key), kind):
            raise CheckpointError(f"checkpoint {str(path)!r}: field {key!r} is missing or not a {kind.__name__}")
    if "/" in doc["arrays_file"] or "\\" in doc["arrays_file"] or doc["arrays_file"].startswith("."):
        raise CheckpointError(f"checkpoint {str(path)!r}: arrays_file {doc['arrays_file']!r} is not a plain file name")
    return doc


def checkpoint_info(folder: str | Path) -> dict:
    """The verified index of a checkpoint (batch, shapes, state), without reading its arrays."""
    return _read_index(Path(folder))


def load_checkpoint(folder: str | Path, expected_shapes: Mapping[str, tuple] | None = None
                    ) -> tuple[dict, dict[str, np.ndarray]]:
    """Load and verify a checkpoint; returns ``(index, arrays)``.

    ``index["state"]`` is the scalar state given to :func:`save_checkpoint`.
    With ``expected_shapes``, a checkpoint of another model shape is refused.

    Raises
    ------
    CheckpointError
        If any check of the module docstring fails.
    """
    folder = Path(folder)
    doc = _read_index(folder)
    if expected_shapes is not None:
        want = _shapes(expected_shapes)
        have = doc["shapes"]
        if have != want:
            diffs = [f"{k}: checkpoint {tuple(have.get(k, ()))}, model {tuple(want.get(k, ()))}"
                     for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]
            raise CheckpointError(f"checkpoint in {str(folder)!r} is for another model shape ("
                                  + "; ".join(diffs) + ")")
    path = folder / doc["arrays_file"]
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint arrays file {str(path)!r} is missing") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint arrays file {str(path)!r} cannot be read: {exc}") from None
    if len(data) != doc["arrays_bytes"]:
        raise CheckpointError(f"checkpoint arrays file {str(path)!r} is truncated or altered "
                              f"({len(data)} bytes, expected {doc['arrays_bytes']})")
    if hashlib.sha256(data).hexdigest() != doc["arrays_sha256"]:
        raise CheckpointError(f"checkpoint arrays file {str(path)!r} is corrupted (SHA-256 mismatch)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise CheckpointError(f"checkpoint arrays file {str(path)!r} cannot be read: {exc}") from None
    return doc, arrays
