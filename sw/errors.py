"""Errors raised when a model file is missing, malformed or not what the loader expects.

Every message names the file, and the tensor when one is involved, so that a bad download or a
truncated copy can be found without a debugger.
"""

from __future__ import annotations

import os

__all__ = ["ModelFileError", "ModelNotInstalledError"]


class ModelFileError(ValueError):
    """A model file (GGUF, safetensors, config) that cannot be used.

    ``ModelFileError(path, "what is wrong", tensor="blk.0.attn_q.weight")`` has the message
    ``"model.gguf: tensor 'blk.0.attn_q.weight': what is wrong"``, where ``model.gguf`` is the
    path exactly as given (so a full path stays a full path). ``tensor`` may be omitted.

    Attributes:
        path: the file, as a string.
        tensor: the tensor name, or None.
        detail: the bare description, without file and tensor.
    """

    def __init__(self, path: str | os.PathLike, detail: str, *, tensor: str | None = None):
        self.path = os.fspath(path)
        self.tensor = tensor
        self.detail = detail
        where = f"{self.path}: tensor {tensor!r}: " if tensor is not None else f"{self.path}: "
        super().__init__(where + detail)

    def __reduce__(self):
        # Keyword-only ``tensor`` would be lost by the default pickling of exceptions (which
        # replays ``args``); pytest-xdist and multiprocessing pickle exceptions.
        return (_rebuild, (self.path, self.detail, self.tensor))


def _rebuild(path: str, detail: str, tensor: str | None) -> ModelFileError:
    return ModelFileError(path, detail, tensor=tensor)


class ModelNotInstalledError(FileNotFoundError):
    """A model wheel is not installed; the message gives the pip command that installs it."""
