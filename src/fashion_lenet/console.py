"""What a person sees on the terminal: each message once, none they cannot act on.

The `lightning` package puts its own console handler on the "lightning" logger, and its records also reach the
root logger that Hydra configured (console and the job's log file): every line twice. Once Hydra's logging is
set up, that handler goes. Lightning's messages a user cannot act on are dropped by their text and logger, and
the one warning of that kind by its text and module; every other message and warning stays.
"""

from __future__ import annotations

import logging
import warnings

# (logger, start of the message): Lightning's notes that say nothing about this run
NOISE = (
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip:"),  # an advertisement for another logger
    ("lightning.pytorch.utilities.rank_zero", "GPU available: False"),  # kept when there is a GPU
    ("lightning.pytorch.utilities.rank_zero", "TPU available: False"),
    ("lightning.pytorch.trainer.connectors.checkpoint_connector", "`weights_only` was not set"),
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(record.name == name and message.startswith(start) for name, start in NOISE)


_DROP_NOISE = _DropNoise()


def quiet_lightning() -> None:
    """Call after `import lightning`, in the process that trains (idempotent)."""
    lightning = logging.getLogger("lightning")
    if logging.getLogger().handlers:  # Hydra's handlers print and file every record once
        for handler in list(lightning.handlers):
            lightning.removeHandler(handler)
    for name in {name for name, _ in NOISE}:
        logger = logging.getLogger(name)
        if _DROP_NOISE not in logger.filters:
            logger.addFilter(_DROP_NOISE)
    # Raised inside Lightning's own pytree helper on torch >= 2.10, twice per job; nothing a user can change.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            module="lightning.pytorch.utilities._pytree")  # fmt: skip
    # The project logs once per epoch (module.py), so a run shorter than Lightning's logging interval loses nothing.
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging",
                            module="lightning.pytorch.loops.fit_loop")  # fmt: skip
