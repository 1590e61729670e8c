"""The error type of the experiments: :class:`CheckpointError` (a leaf module, cheap to import)."""

from __future__ import annotations

import os

__all__ = ["CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded into the model: corrupt, tampered or of another run.

    A subclass of :class:`ValueError`.  The message names the file and the entry (``key``) at
    fault; both are also attributes.

    Parameters
    ----------
    path : str or path-like
        The checkpoint file.
    key : str or None
        The entry of the file at fault (``"param/W"``, ``"opt/meta"``, ...), or None when the
        file as a whole is unreadable.
    reason : str
        What is wrong and what was expected.

    Attributes
    ----------
    path : str
        The checkpoint file.
    key : str or None
        The entry at fault.

    Examples
    --------
    >>> from unitary_update.experiments import CheckpointError
    >>> err = CheckpointError("run/checkpoint.npz", "param/W", "shape (1, 8); the model's is (8, 8)")
    >>> print(err)
    run/checkpoint.npz: param/W: shape (1, 8); the model's is (8, 8)
    >>> isinstance(err, ValueError), err.key
    (True, 'param/W')
    """

    def __init__(self, path: str | os.PathLike[str], key: str | None, reason: str) -> None:
        self.path = os.fspath(path)
        self.key = key
        where = f"{self.path}: {key}: " if key is not None else f"{self.path}: "
        super().__init__(where + reason)

    def __reduce__(self) -> tuple[type[CheckpointError], tuple[str, str | None, str]]:
        prefix = f"{self.path}: {self.key}: " if self.key is not None else f"{self.path}: "
        return (type(self), (self.path, self.key, str(self)[len(prefix) :]))
