"""Run records: the files a training run leaves behind, each written atomically.

A run folder holds

``config.toml``        the fully resolved configuration (every key, defaults included);
``metrics.csv``        one row per validation point, a header row first (:data:`METRIC_COLUMNS`);
``summary.json``       status, best and final values, the baseline, timing;
``weights.npz``        the final parameters by their paper names (plain arrays, no pickle);
``weights_best.npz``   the parameters at the best validation loss;
``checkpoint/``        the latest complete training state (:mod:`tpgraph.train.checkpoint`);
``loss.png``, ``spectral_radius.png``  the plots.

Every file is written to a temporary file in the same folder, flushed to disk
(``fsync``) and renamed over the old one (``os.replace``), so a reader, or a
run killed at any instant, sees either the old file or the new one, never a
partial one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..errors import CheckpointError, TPGraphError

__all__ = [
    "METRIC_COLUMNS", "current_umask", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_save_npz",
    "write_metrics_csv", "read_metrics_csv", "read_summary", "save_weights", "load_npz", "RunFiles",
]

#: Columns of ``metrics.csv``, one row per validation point.
METRIC_COLUMNS: tuple[str, ...] = (
    "batch",                   # training batches done at this point
    "train_loss",              # mean per-step cross-entropy of the training batches since the last point
    "val_loss",                # mean per-step cross-entropy on the fixed validation set
    "step_acc",                # fraction of validation positions right
    "seq_acc",                 # fraction of validation sequences right at every position
    "spectral_radius_W_h",     # largest |eigenvalue| of W_h
    "spectral_radius_V_h",     # largest |eigenvalue| of V_h
    "reconstruction_loss",     # the inverse's loss per sample at the last training batch (TP)
    "local_loss",              # mean over time steps of 1/2 ||h_hat_t - h_t||^2 per sample, last batch (TP)
    "elapsed_s",               # wall-clock seconds since the run started (resumed runs: summed)
)


# ---------------------------------------------------------------------- atomic writes
def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process's file-mode creation mask, read without changing it.

    Linux reports it in ``/proc/self/status``; elsewhere it is read by setting
    and restoring it (``os.umask`` has no read-only form).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, fsync, rename.

    The file gets the mode an ordinary ``open(path, "w")`` would give it
    (``0o666`` less the umask, so 0644 under the usual umask 022), not the
    owner-only 0600 of the temporary file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_safe(value: Any) -> Any:
    """Non-finite floats become ``None`` (JSON has no NaN); numpy scalars become Python ones."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def atomic_write_json(path: str | Path, data: Mapping) -> None:
    """Write standard JSON (NaN and inf as ``null``) atomically."""
    atomic_write_text(path, json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n")


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """The bytes of an uncompressed ``.npz`` holding ``arrays`` (no object arrays: no pickle)."""
    for k, a in arrays.items():
        if np.asarray(a).dtype == object:
            raise TypeError(f"array {k!r} has dtype object; npz files here never hold pickles")
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(a) for k, a in arrays.items()})
    return buf.getvalue()


def atomic_save_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> bytes:
    """Save ``arrays`` as an ``.npz`` atomically; returns the bytes written (for checksums)."""
    data = npz_bytes(arrays)
    atomic_write_bytes(path, data)
    return data


def load_npz(path: str | Path, what: str = "weight file") -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` with ``allow_pickle=False``.

    Raises
    ------
    CheckpointError
        If the file is missing, truncated, corrupted (zip CRC), or holds
        anything but plain arrays; nothing is returned half-read.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise CheckpointError(f"{what} {str(path)!r} not found") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError, KeyError) as exc:
        raise CheckpointError(f"{what} {str(path)!r} is truncated or corrupted and was not loaded "
                              f"({type(exc).__name__}: {exc})") from None


def save_weights(path: str | Path, params: Mapping[str, np.ndarray]) -> None:
    """Save parameters by their group names (``W_xh``, ``W_h``, ...) as a plain ``.npz``."""
    atomic_save_npz(path, {k: np.asarray(v) for k, v in params.items()})


# ---------------------------------------------------------------------- metrics.csv
def _format_cell(value: float) -> str:
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    value = float(value)
    if math.isnan(value):
        return ""  # an empty cell: NaN in pandas, blank in a spreadsheet
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def metrics_csv_text(rows: Iterable[Mapping[str, float]], columns: Iterable[str] = METRIC_COLUMNS) -> str:
    columns = list(columns)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_format_cell(row.get(c, float("nan"))) for c in columns])
    return buf.getvalue()


def write_metrics_csv(path: str | Path, rows: Iterable[Mapping[str, float]],
                      columns: Iterable[str] = METRIC_COLUMNS) -> None:
    """Write the metrics rows (header first) atomically."""
    atomic_write_text(path, metrics_csv_text(rows, columns))


def read_metrics_csv(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a ``metrics.csv`` as float arrays (empty cells are NaN).

    Raises
    ------
    TPGraphError
        If the file is missing or not a metrics table.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except FileNotFoundError:
        raise TPGraphError(f"no metrics file {str(path)!r} (is this a run folder?)") from None
    if not rows or "batch" not in rows[0]:
        raise TPGraphError(f"{str(path)!r} is not a metrics table (no header row with 'batch')")
    header = rows[0]
    cols = {c: [] for c in header}
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise TPGraphError(f"{str(path)!r}, line {i}: {len(row)} cells, the header has {len(header)}")
        for c, cell in zip(header, row):
            try:
                cols[c].append(float(cell) if cell != "" else math.nan)
            except ValueError:
                raise TPGraphError(f"{str(path)!r}, line {i}: column {c!r} holds {cell!r}, not a number") from None
    return {c: np.array(v, dtype=np.float64) for c, v in cols.items()}


def read_summary(path: str | Path) -> dict:
    """The ``summary.json`` of a run (a path to the file or to the run folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "summary.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TPGraphError(f"no summary file {str(path)!r} (is this a run folder?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TPGraphError(f"summary file {str(path)!r} is not valid JSON: {exc}") from None


class RunFiles:
    """The paths of one run folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    config = property(lambda self: self.root / "config.toml")
    metrics = property(lambda self: self.root / "metrics.csv")
    summary = property(lambda self: self.root / "summary.json")
    weights = property(lambda self: self.root / "weights.npz")
    weights_best = property(lambda self: self.root / "weights_best.npz")
    checkpoint_dir = property(lambda self: self.root / "checkpoint")
    loss_plot = property(lambda self: self.root / "loss.png")
    spectral_plot = property(lambda self: self.root / "spectral_radius.png")

    def __repr__(self):
        return f"RunFiles({str(self.root)!r})"
