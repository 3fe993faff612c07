"""Which cluster environment Lightning trains a job under: chosen here, not left to Lightning's detection.

Every job of a sweep trains one device in one process, and on Slurm it is requeued by submitit (USR2, then our
resume from last.ckpt), so Lightning's own SLURM auto-requeue (a SIGUSR1 handler that saves an `hpc_ckpt_*.ckpt` and
calls `scontrol requeue`) would be a second, competing mechanism: inside a Slurm job step it is turned off. Outside
one, Lightning's environment for a process it starts itself. A login node's `srun` is on PATH but unused: the
warning Lightning gives for that is dropped (console.quiet_lightning), as nobody running this project can act on it.
"""

from __future__ import annotations

from lightning.fabric.plugins.environments import ClusterEnvironment, LightningEnvironment, SLURMEnvironment


def environment() -> ClusterEnvironment:
    """The trainer's cluster environment (conf/trainer/default.yaml's plugins)."""
    if SLURMEnvironment.detect():  # a Slurm job step (srun, or submitit's sbatch script)
        return SLURMEnvironment(auto_requeue=False)  # ranks from Slurm, for one run over several srun tasks
    return LightningEnvironment()
