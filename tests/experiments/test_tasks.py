"""Task generators: structure of copy and adding batches, baselines, permuted MNIST from the IDX files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from unitary_update.experiments.tasks import (
    TASK_CLASSES,
    TASKS,
    AddingTask,
    CopyTask,
    PermutedMNIST,
    make_task,
    task_class,
)

MNIST_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mnist"


def test_copy_task_layout():
    task = CopyTask(7)
    x, y = task.batch(16, rng=0)
    T = 27
    assert x.shape == (16, T, 10)
    assert y.shape == (16, T)
    assert x.dtype == np.float32
    assert y.dtype == np.int64
    np.testing.assert_array_equal(x.sum(-1), 1)  # one-hot
    symbols = x.argmax(-1)
    data = symbols[:, :10]
    assert data.min() >= 1
    assert data.max() <= 8
    np.testing.assert_array_equal(symbols[:, 10 : 7 + 9], 0)
    np.testing.assert_array_equal(symbols[:, 7 + 9], 9)  # marker: 10 steps before the end
    np.testing.assert_array_equal(symbols[:, -10:], 0)
    np.testing.assert_array_equal(y[:, :-10], 0)
    np.testing.assert_array_equal(y[:, -10:], data)


def test_copy_baseline_is_the_memoryless_strategy():
    task = CopyTask(30)
    assert task.baseline == pytest.approx(10 * math.log(8) / 50)
    _, y = task.batch(256, rng=1)
    # blanks with certainty, then uniform over the 8 data symbols
    p = np.zeros((256, task.length, 10))
    p[:, :-10, 0] = 1
    p[:, -10:, 1:9] = 1 / 8
    ce = -np.log(np.take_along_axis(p, y[..., None], -1)).mean()
    assert ce == pytest.approx(task.baseline, rel=1e-12)


def test_adding_task_targets_and_baseline():
    task = AddingTask(20)
    x, y = task.batch(4000, rng=0)
    assert x.shape == (4000, 20, 2)
    assert y.shape == (4000, 1)
    marks = x[..., 1]
    np.testing.assert_array_equal(marks.sum(1), 2)
    np.testing.assert_array_equal(marks[:, :10].sum(1), 1)  # one in each half
    np.testing.assert_allclose(y[:, 0], (x[..., 0] * marks).sum(1), rtol=1e-6)
    assert np.mean((y - 1.0) ** 2) == pytest.approx(task.baseline, abs=0.01)


def test_batches_are_seeded():
    a = CopyTask(3).batch(4, rng=5)
    b = CopyTask(3).batch(4, rng=5)
    c = CopyTask(3).batch(4, rng=6)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: CopyTask(0), "delay must be an integer >= 1"),
        (lambda: AddingTask(1), "length must be an integer >= 2"),
        (lambda: CopyTask(3).batch(0), "batch_size must be an integer >= 1"),
        (lambda: make_task("parity"), "task must be one of"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_missing_mnist_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        PermutedMNIST(tmp_path)


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="MNIST files not present at ../shared/data/mnist")
def test_permuted_mnist_from_the_shared_files():
    task = PermutedMNIST(MNIST_DIR, permutation_seed=3)
    images, labels = task.train
    assert images.shape == (60000, 784)
    assert labels.shape == (60000,)
    assert abs(float(images.mean())) < 1e-3  # normalised by the training statistics
    assert float(images.std()) == pytest.approx(1.0, abs=1e-3)
    assert sorted(task.permutation) == list(range(784))
    np.testing.assert_array_equal(task.permutation, PermutedMNIST(MNIST_DIR, permutation_seed=3).permutation)
    x, y = task.epoch_batch(5, 32, seed=0)
    assert x.shape == (32, 784, 1)
    assert y.shape == (32,)
    # one epoch visits every training image once
    seen = np.concatenate([task.epoch_batch(i, 20000, seed=0)[1] for i in range(3)])
    np.testing.assert_array_equal(np.bincount(seen, minlength=10), np.bincount(labels, minlength=10))
    xt, yt = task.split("test", 10)
    assert xt.shape == (10, 784, 1)
    assert yt.shape == (10,)


def test_training_draws_are_seeded_by_step_and_run():
    task = AddingTask(6)
    np.testing.assert_array_equal(task.train_batch(4, 7, seed=1)[0], task.batch(4, np.random.default_rng([1, 1, 7]))[0])
    assert not np.array_equal(task.train_batch(4, 7, seed=1)[0], task.train_batch(4, 8, seed=1)[0])
    np.testing.assert_array_equal(task.eval_set(5, seed=1)[1], task.batch(5, np.random.default_rng([1, 2]))[1])


def test_permuted_mnist_training_draws_epochs_and_holds_out_the_test_set(fake_mnist):
    task = make_task("pmnist", mnist_dir=fake_mnist)
    x, y = task.train_batch(32, 9, seed=2)  # step 9 of 8 per epoch: epoch 1, batch 1
    np.testing.assert_array_equal(y, task.epoch_batch(9, 32, seed=2)[1])
    assert x.shape == (32, 784, 1)
    xt, yt = task.eval_set(10, seed=5)
    np.testing.assert_array_equal(xt, task.split("test", 10)[0])
    assert yt.shape == (10,)


def test_task_classes_describe_tasks_without_building_them():
    assert tuple(TASK_CLASSES) == TASKS
    assert task_class("pmnist") is PermutedMNIST
    assert task_class("pmnist").classification
    assert not task_class("copy").classification
    assert [task_class(name).hidden_size for name in TASKS] == [190, 170, 170]
    assert CopyTask.label(1000) == "copy delay 1000"
    assert AddingTask.label() == "adding length 200"
    assert PermutedMNIST.label(5) == "pmnist"
    with pytest.raises(ValueError, match="task must be one of"):
        task_class("parity")


def test_permuted_mnist_raw_pixels_are_the_grey_levels_over_255(write_fake_mnist, tmp_path):
    arrays = write_fake_mnist(tmp_path, 20, 6)
    raw = make_task("pmnist", mnist_dir=tmp_path, permutation_seed=1, pixels="raw")
    standard = make_task("pmnist", mnist_dir=tmp_path, permutation_seed=1)
    perm = raw.permutation
    expected = arrays["train_images"].reshape(-1, 784)[:, perm].astype(np.float32) / 255
    np.testing.assert_array_equal(raw.train[0], expected)
    assert raw.train[0].dtype == np.float32
    assert raw.test[0].dtype == np.float32
    np.testing.assert_array_equal(raw.test[0], arrays["test_images"].reshape(-1, 784)[:, perm].astype(np.float32) / 255)
    # the standardised images are the same pixels, shifted and scaled by the training statistics
    mean, std = expected.mean(), expected.std()
    np.testing.assert_allclose(standard.train[0], (expected - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(raw.train[1], standard.train[1])


@pytest.mark.parametrize(("pixels", "error"), [("normalized", ValueError), (None, TypeError), (1, TypeError)])
def test_permuted_mnist_pixels_choice_is_checked(fake_mnist, pixels, error):
    with pytest.raises(error, match="pixels must be one of 'standardized', 'raw'"):
        PermutedMNIST(fake_mnist, pixels=pixels)
