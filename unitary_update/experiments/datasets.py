"""Reading MNIST from the four standard IDX files; nothing is ever downloaded.

The IDX format: a big-endian header (two zero bytes, a type code, the number of dimensions, then
each dimension as a 32-bit integer) followed by the data.  Files may be gzip-compressed (``.gz``)
or raw.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np
from numpy.typing import DTypeLike

__all__ = ["MNIST_FILES", "load_mnist", "read_idx"]

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_IDX_TYPES: dict[int, DTypeLike] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (raw or gzip-compressed) into an array of its declared shape.

    Parameters
    ----------
    path : str or path-like
        The file; a name ending in ``.gz`` is decompressed.

    Returns
    -------
    numpy.ndarray
        The data with the shape and element type the header declares.

    Raises
    ------
    TypeError
        If ``path`` is not a path.
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the header is malformed, the file is shorter than the header says, or a gzip
        stream is corrupt (named by its path).

    Examples
    --------
    >>> import gzip, tempfile, os, numpy as np
    >>> from unitary_update.experiments.datasets import read_idx
    >>> header = bytes([0, 0, 0x08, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    >>> path = os.path.join(tempfile.mkdtemp(), "x.gz")
    >>> with gzip.open(path, "wb") as f:
    ...     _ = f.write(header + bytes(range(6)))
    >>> read_idx(path)
    array([[0, 1, 2],
           [3, 4, 5]], dtype=uint8)
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a path (str or os.PathLike); got {type(path).__name__}")
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zlib.error) as err:  # a corrupt or truncated gzip stream
        raise ValueError(f"{path} cannot be read as an IDX file ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header_len = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    count = math.prod(shape)  # a Python int: a tampered header cannot overflow it
    size = header_len + count * dtype.itemsize
    if len(raw) < size:
        raise ValueError(f"{path} is truncated: header declares shape {shape}")
    if len(raw) > size:  # e.g. more labels than the header counts: the header and the data disagree
        extra = len(raw) - size
        raise ValueError(f"{path} holds {extra} bytes after the data of the shape {shape} its header declares")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header_len)
    return data.reshape(shape).astype(dtype.newbyteorder("="))


def _find(directory: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"MNIST file {stem}(.gz) not found in {directory}; nothing is downloaded")


def load_mnist(directory: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load the four MNIST IDX files from ``directory`` (``.gz`` or uncompressed).

    Parameters
    ----------
    directory : str or path-like
        Folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``).

    Returns
    -------
    dict
        ``train_images`` (60000, 28, 28) uint8, ``train_labels`` (60000,) uint8,
        ``test_images`` (10000, 28, 28) uint8, ``test_labels`` (10000,) uint8.

    Raises
    ------
    TypeError
        If ``directory`` is not a path.
    FileNotFoundError
        Naming the first missing file.
    ValueError
        If a file is corrupt, images are not (n, 28, 28) uint8, labels not uint8 digits 0-9,
        a set is empty, or images and labels disagree in number.

    Examples
    --------
    >>> from unitary_update.experiments.datasets import load_mnist
    >>> load_mnist("/nonexistent")
    Traceback (most recent call last):
    ...
    FileNotFoundError: MNIST file train-images-idx3-ubyte(.gz) not found in /nonexistent; nothing is downloaded
    """
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory must be a path (str or os.PathLike); got {type(directory).__name__}")
    directory = Path(directory)
    data = {key: read_idx(_find(directory, stem)) for key, stem in MNIST_FILES.items()}
    for split in ("train", "test"):
        images, labels = data[f"{split}_images"], data[f"{split}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            raise ValueError(
                f"{split} images in {directory} must be (n, 28, 28) uint8; got {images.dtype} {images.shape}"
            )
        if labels.ndim != 1 or labels.dtype != np.uint8 or (labels.size and int(labels.max()) > 9):
            raise ValueError(f"{split} labels in {directory} must be (n,) uint8 digits 0-9")
        if len(images) != len(labels):
            raise ValueError(f"{split} images and labels differ in number in {directory}")
        if len(images) == 0:
            raise ValueError(f"{split} set in {directory} is empty")
    return data
