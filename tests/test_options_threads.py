"""Options live in a ContextVar: ``with uu.options(...)`` is local to a thread or an asyncio task."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

import unitary_update as uu
from unitary_update._config import Options

NAN_A = np.full((4, 1), np.nan)


def _nan_passes() -> bool:
    """True when a NaN factor goes through (check_finite off), False when it raises."""
    try:
        uu.project(np.eye(4), NAN_A, np.ones((4, 1)))
    except uu.NonFiniteError:
        return False
    return True


def test_two_threads_with_overlapping_blocks_see_only_their_own():
    first_in, second_in, first_out, second_checked = (threading.Event() for _ in range(4))
    seen: dict[str, object] = {}
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with uu.options(check_finite=False):
                first_in.set()
                assert second_in.wait(10)
                seen["first inside"] = _nan_passes()
            first_out.set()
            assert second_checked.wait(10)
            seen["first after"] = uu.get_options().check_finite
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    def second() -> None:
        try:
            assert first_in.wait(10)
            seen["second before"] = _nan_passes()  # first is inside its block now
            with uu.options(check_finite=False, backend="numpy"):
                second_in.set()
                assert first_out.wait(10)  # first has left its block; ours is still open
                seen["second inside"] = (_nan_passes(), uu.get_options().backend)
            seen["second after"] = uu.get_options()
            second_checked.set()
        except BaseException as err:  # pragma: no cover
            errors.append(err)
            second_checked.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert seen == {
        "first inside": True,
        "second before": False,
        "second inside": (True, "numpy"),
        "second after": Options(),
        "first after": True,
    }
    assert uu.get_options() == Options()
    assert not _nan_passes()


def test_new_threads_start_from_the_defaults_and_set_options_is_per_thread():
    seen = {}

    def worker() -> None:
        seen["start"] = uu.get_options()
        uu.set_options(check_finite=False)  # only this thread
        seen["after set"] = uu.get_options().check_finite

    with uu.options(backend="numpy", check_finite=False):
        t = threading.Thread(target=worker)
        t.start()
        t.join(10)
        assert uu.get_options() == Options(backend="numpy", check_finite=False)
    assert seen == {"start": Options(), "after set": False}
    assert uu.get_options().check_finite is True


def test_asyncio_tasks_interleaving_blocks():
    async def task(flag: bool, log: list) -> None:
        with uu.options(check_finite=flag):
            for _ in range(3):
                await asyncio.sleep(0)  # the other task runs inside its own block meanwhile
                log.append((flag, uu.get_options().check_finite, _nan_passes()))

    async def main() -> list:
        log: list = []
        await asyncio.gather(task(False, log), task(True, log))
        log.append(("after", uu.get_options().check_finite, _nan_passes()))
        return log

    log = asyncio.run(main())
    assert len(log) == 7
    for flag, value, passes in log[:-1]:
        assert value is flag
        assert passes is (not flag)
    assert log[-1] == ("after", True, False)


def test_options_are_immutable_and_validated():
    with pytest.raises(AttributeError, match="immutable"):
        uu.get_options().check_finite = False  # type: ignore[misc]
    with pytest.raises(TypeError, match="check_finite must be True or False"):
        uu.set_options(check_finite="no")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backend must be one of"), uu.options(backend="cuda"):
        pass  # pragma: no cover
    assert uu.get_options() == Options()


def test_options_block_restores_on_error():
    with pytest.raises(RuntimeError), uu.options(check_finite=False):
        raise RuntimeError
    assert uu.get_options().check_finite is True
