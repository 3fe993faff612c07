"""Checkpoint files that survive a kill mid-write, and a readable refusal of those that cannot be resumed from."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from fashion_lenet.errors import UserError

LIGHTNING_KEYS = ("state_dict", "loops")  # what every checkpoint Lightning's Trainer writes holds


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, then renames it over the old one.

    A rename within a folder is atomic, so a job killed or failing mid-write leaves the previous checkpoint whole
    (Lightning's own write stages it in the system's temp folder, and moving it from there onto another filesystem
    is a copy that a kill can cut short). Local paths only: a remote fsspec URL (`s3://...`) is left to Lightning.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)  # which rejects storage_options
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp", delete=False) as f:
            temporary = Path(f.name)
        try:
            torch.save(checkpoint, temporary)
            temporary.chmod(_new_file_mode())  # NamedTemporaryFile's 0600 would hide it from the user's group
            os.replace(temporary, path)
        except BaseException:  # a KeyboardInterrupt too: leave no half-written file behind
            temporary.unlink(missing_ok=True)
            raise


def _new_file_mode() -> int:
    """The permissions a plainly created file gets: 0666 less the process's umask."""
    umask = os.umask(0)  # the umask can only be read by setting it
    os.umask(umask)
    return 0o666 & ~umask


def check_resumable(path: str | Path, what_to_do: str) -> None:
    """Raises a one-line UserError unless path is a whole training checkpoint that Lightning can resume from."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError as error:
        raise UserError(f"{path} cannot be resumed from (no such file): {what_to_do}") from error
    # Damaged bytes make torch.load raise almost anything (EOFError, RuntimeError from its zip reader, OSError,
    # UnpicklingError, UnicodeDecodeError, AttributeError...); every one means the same to the user.
    except Exception as error:
        reason = f"cut short or damaged: {type(error).__name__}"
        raise UserError(f"{path} cannot be resumed from ({reason}): {what_to_do}") from error
    if not isinstance(checkpoint, dict) or not all(key in checkpoint for key in LIGHTNING_KEYS):
        raise UserError(f"{path} cannot be resumed from (not a training checkpoint of this project): {what_to_do}")

