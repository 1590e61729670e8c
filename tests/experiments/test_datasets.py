"""The IDX reader and the MNIST loader (the real files are used where ../shared/data/mnist exists)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unitary_update.experiments.datasets import MNIST_FILES, load_mnist, read_idx

MNIST_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mnist"


@pytest.mark.parametrize("compress", [True, False])
def test_round_trip_small_fake_mnist(tmp_path, compress, write_fake_mnist):
    arrays = write_fake_mnist(tmp_path, 5, 3, compress)
    data = load_mnist(tmp_path)
    for key, value in arrays.items():
        np.testing.assert_array_equal(data[key], value)
        assert data[key].dtype == np.uint8


def test_missing_file_is_named(tmp_path, write_idx):
    write_idx(tmp_path / MNIST_FILES["train_images"], np.zeros((1, 2, 2)))
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
        load_mnist(tmp_path)


def test_bad_and_truncated_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\x00" * 3)
    with pytest.raises(ValueError, match="truncated"):
        read_idx(short)
    long = tmp_path / "long"  # 12 labels where the header counts 10: header and data disagree
    long.write_bytes(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\x00" * 12)
    with pytest.raises(ValueError, match=r"holds 2 bytes after the data of the shape \(10,\)"):
        read_idx(long)


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="../shared/data/mnist not present")
def test_real_mnist_shapes_and_statistics():
    data = load_mnist(MNIST_DIR)
    assert data["train_images"].shape == (60000, 28, 28)
    assert data["test_images"].shape == (10000, 28, 28)
    assert data["train_labels"].shape == (60000,)
    assert set(np.unique(data["test_labels"])) == set(range(10))
    mean = data["train_images"].mean() / 255
    assert abs(mean - 0.1307) < 1e-3
