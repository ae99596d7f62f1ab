"""The reconstruction HDF5 (fastMRI style): `reconstruction` [slice, kx, ky] float32 plus attrs.

Attributes record how the image was made (method, R, ACS, timings, metrics) so that a file is
self-describing; nested values are stored as JSON strings. Written atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from raki.errors import FileFormatError
from raki.io.paths import check_input_file

DATASET = "reconstruction"


def _attribute_value(value: Any) -> Any:
    if value is None:
        return "null"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value)
    return value


def write_reconstruction(path: str | Path, image: np.ndarray, attrs: dict[str, Any]) -> Path:
    """Write `image` [slice, kx, ky] and `attrs` to `path` via a temporary file and a rename."""
    path = Path(path)
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"reconstruction must be [slice, kx, ky], got shape {image.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with h5py.File(partial, "w") as handle:
            handle.create_dataset(DATASET, data=image)
            handle.attrs["max"] = float(image.max()) if image.size else 0.0
            for key, value in attrs.items():
                handle.attrs[key] = _attribute_value(value)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def read_reconstruction(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """The image and attrs of a reconstruction file (JSON attrs decoded)."""
    path = check_input_file(path)
    try:
        with h5py.File(path, "r") as handle:
            if DATASET not in handle:
                raise FileFormatError(path, f"no '{DATASET}' dataset")
            image = handle[DATASET][()]
            attrs: dict[str, Any] = {}
            for key, value in handle.attrs.items():
                if isinstance(value, bytes):
                    value = value.decode()
                if isinstance(value, str) and value[:1] in "[{n":
                    with contextlib.suppress(json.JSONDecodeError):
                        value = json.loads(value)
                attrs[key] = value.item() if hasattr(value, "item") else value
    except OSError as exc:
        raise FileFormatError(
            path, f"not a readable HDF5 file ({exc.__class__.__name__})"
        ) from None
    return image, attrs
