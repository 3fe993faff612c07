"""Checkpoint files that survive a kill mid-write, are read as data only, and a readable refusal of those that
cannot be resumed from; the checkpoint a solo run continues from (`solo_checkpoint`).

A checkpoint is a pickle, and unpickling a crafted one can call any function. Every load of the project therefore
goes through torch's weights-only unpickler, which rebuilds tensors and plain containers (dict, list, tuple,
OrderedDict, str, numbers, None) and refuses everything else before calling it: `load_checkpoint` for the
project's own loads, `AtomicCheckpointIO.load_checkpoint` for Lightning's (resume, testing the best checkpoint),
`weights_only=True` where evaluate calls `LeNetModule.load_from_checkpoint`. The project's checkpoints need no type
beyond torch's own list (hyperparameters are plain dicts, RNG states tensors; tests/test_checkpoint_safety.py loads
the committed old ones), so none is allowed: a type that ever must be would be named here, with
`torch.serialization.safe_globals`.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from fashion_lenet.sweep.errors import ConfigError, UserError
from fashion_lenet.sweep.resume import clear_outputs, fused_group_checkpoint, last_checkpoint

log = logging.getLogger(__name__)

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

    def load_checkpoint(self, path: Any, *args: Any, weights_only: bool | None = None, **kwargs: Any) -> dict[str, Any]:
        """Lightning's loads (`trainer.fit(ckpt_path=...)`, `trainer.test(ckpt_path=...)`): weights-only, whatever
        Lightning passes (it leaves weights_only unset); a file that holds code is refused in one line."""
        try:
            return super().load_checkpoint(path, *args, **kwargs, weights_only=True)
        except pickle.UnpicklingError as error:
            if code := refused_code(error):
                raise UserError(f"{path} cannot be loaded (it holds code, not only data: {code}): "
                                "give a checkpoint this project wrote") from error  # fmt: skip
            raise


def _new_file_mode() -> int:
    """The permissions a plainly created file gets: 0666 less the process's umask."""
    umask = os.umask(0)  # the umask can only be read by setting it
    os.umask(umask)
    return 0o666 & ~umask


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> Any:
    """A checkpoint file's contents, read by torch's weights-only unpickler: data, never code (see the top)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def refused_code(error: BaseException) -> str | None:
    """The global ("posix.system") that torch's weights-only unpickler refused to call, when that is why a load
    failed; None for any other failure (a damaged file also fails there, on a byte it cannot read)."""
    if not isinstance(error, pickle.UnpicklingError):
        return None
    found = re.search(r"GLOBAL (\S+) (?:was not an allowed global|whose module)", str(error))
    return found.group(1) if found else None


def check_resumable(path: str | Path, what_to_do: str) -> None:
    """Raises a one-line UserError unless path is a whole training checkpoint that Lightning can resume from."""
    try:
        checkpoint = load_checkpoint(path)
    except FileNotFoundError as error:
        raise UserError(f"{path} cannot be resumed from (no such file): {what_to_do}") from error
    # Damaged bytes make torch.load raise almost anything (EOFError, RuntimeError from its zip reader, OSError,
    # UnpicklingError, UnicodeDecodeError, AttributeError...); every one means the same to the user.
    except Exception as error:
        code = refused_code(error)
        reason = f"it holds code, not only data: {code}" if code else f"cut short or damaged: {type(error).__name__}"
        raise UserError(f"{path} cannot be resumed from ({reason}): {what_to_do}") from error
    if not isinstance(checkpoint, dict) or not all(key in checkpoint for key in LIGHTNING_KEYS):
        raise UserError(f"{path} cannot be resumed from (not a training checkpoint of this project): {what_to_do}")


def solo_checkpoint(output_dir: Path, ckpt_path: str | None, mode: bool | str) -> str | None:
    """The checkpoint a solo run continues from (`ckpt_path`, or with `resume` its folder's last.ckpt), checked.

    A damaged last.ckpt is refused in one line, or with resume=retry set aside: the job trains again.
    """
    output_dir = Path(output_dir)
    if ckpt_path is None and mode and fused_group_checkpoint(output_dir):
        raise ConfigError(f"resume={mode}: {output_dir} was interrupted as a member of a fused group; resume the "
                          "sweep with the launcher it ran with (hydra/launcher=fused)")  # fmt: skip
    resuming = ckpt_path is None
    ckpt_path = ckpt_path or last_checkpoint(output_dir, mode)
    path = output_dir / "checkpoints" / "last.ckpt" if ckpt_path == "last" else ckpt_path
    if path is None or path == "hpc" or "://" in str(path) or not Path(path).is_file():
        return ckpt_path  # nothing to resume, or a checkpoint Lightning finds or fetches itself
    try:
        check_resumable(path, "resume=retry trains the job again" if resuming else "give another ckpt_path")
    except UserError:
        if not (resuming and mode == "retry"):
            raise
        log.warning(f"{path} is damaged: resume=retry trains the job in {output_dir} again")
        clear_outputs(output_dir)
        return None
    return ckpt_path
