"""Fixtures of the experiment tests: writers of IDX files and a small fake MNIST."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from unitary_update.experiments.datasets import MNIST_FILES


def _write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """Write ``array`` as an IDX file of unsigned bytes (``path`` + ``.gz`` when ``compress``)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _write_fake_mnist(directory: Path, n_train: int, n_test: int, compress: bool = True) -> dict[str, np.ndarray]:
    """The four MNIST files of random images and labels in ``directory``; returns the arrays."""
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)),
        "train_labels": rng.integers(0, 10, n_train),
        "test_images": rng.integers(0, 256, (n_test, 28, 28)),
        "test_labels": rng.integers(0, 10, n_test),
    }
    for key, stem in MNIST_FILES.items():
        _write_idx(directory / stem, arrays[key], compress)
    return arrays


@pytest.fixture
def write_idx():
    """``write_idx(path, array, compress=True)``: an IDX file of unsigned bytes."""
    return _write_idx


@pytest.fixture
def write_fake_mnist():
    """``write_fake_mnist(directory, n_train, n_test, compress=True) -> arrays``: random MNIST files."""
    return _write_fake_mnist


@pytest.fixture
def fake_mnist(tmp_path):
    """A folder with a fake MNIST (gzip-compressed): 256 random training and 64 test images."""
    directory = tmp_path / "mnist"
    directory.mkdir()
    _write_fake_mnist(directory, 256, 64)
    return directory
