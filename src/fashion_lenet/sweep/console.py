"""What a person sees on the terminal: each message once, none they cannot act on.

The `lightning` package puts its own console handler on the "lightning" logger, and its records also reach the
root logger that Hydra configured (console and the job's log file): every line twice. Once Hydra's logging is
set up, that handler goes. Messages that say nothing the job's own lines (hydra_callback.JobOutcome) do not say
better are dropped by their text and logger, and Lightning's one warning of that kind by its text and module;
every other message and warning stays.
"""

from __future__ import annotations

import logging
import warnings

_RANK_ZERO = "lightning.pytorch.utilities.rank_zero"
# (logger, start of the message)
NOISE = (
    (_RANK_ZERO, "💡 Tip:"),  # an advertisement for another logger
    (_RANK_ZERO, "GPU available: False"),  # kept when there is a GPU
    (_RANK_ZERO, "TPU available: False"),
    ("lightning.fabric.utilities.seed", "Seed set to"),  # the seed is in the config, metrics.json, the job line
    (_RANK_ZERO, "`Trainer.fit` stopped: `max_epochs="),  # the planned end; other reasons to stop still show
    # Testing the best checkpoint (the job's end line says so). A resume still shows "Restored all states from".
    (_RANK_ZERO, "Restoring states from the checkpoint path at"),
    (_RANK_ZERO, "Loaded model weights from the checkpoint at"),
)
# Hydra's basic and joblib launchers list each job's overrides, all of them: the job's start line
# (`[4/6] job 3: model=bn_pre optim.lr=0.001`) names what sets it apart.
LAUNCHER_NOISE = (("hydra._internal.core_plugins.basic_launcher", "\t#"),
                  ("hydra_plugins.hydra_joblib_launcher._core", "\t#"))  # fmt: skip


class _DropNoise(logging.Filter):
    def __init__(self, noise: tuple[tuple[str, str], ...]):
        super().__init__()
        self.noise = noise

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(record.name == name and message.startswith(start) for name, start in self.noise)


def _drop(noise: tuple[tuple[str, str], ...]) -> None:
    for name in {name for name, _ in noise}:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) and f.noise == noise for f in logger.filters):
            logger.addFilter(_DropNoise(noise))


def quiet_launcher() -> None:
    """Call in a sweeper's setup, before jobs launch (idempotent)."""
    _drop(LAUNCHER_NOISE)


def quiet_lightning() -> None:
    """Call after `import lightning`, in the process that trains (idempotent)."""
    lightning = logging.getLogger("lightning")
    if logging.getLogger().handlers:  # Hydra's handlers print and file every record once
        for handler in list(lightning.handlers):
            lightning.removeHandler(handler)
    _drop(NOISE)
    # Raised inside Lightning's own pytree helper on torch >= 2.10, twice per job; nothing a user can change.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            module="lightning.pytorch.utilities._pytree")  # fmt: skip
    # On a cluster's login node `srun` is on PATH; a sweep's jobs are one process each and reach Slurm through
    # submitit, so "prepend srun" is advice for Lightning's multi-process runs, not for this project (cluster.py).
    warnings.filterwarnings("ignore", message="The `srun` command is available on your system but is not used")
    # The project logs once per epoch (module.py), so a run shorter than Lightning's logging interval loses nothing.
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging",
                            module="lightning.pytorch.loops.fit_loop")  # fmt: skip
