"""Lightning and Hydra through their public APIs only; the few internals with no public alternative are listed
here, each pinned by a test that fails when the internal changes (so a minor release breaks loudly, not silently).

| internal                                          | used by                              | why                       |
|---------------------------------------------------|--------------------------------------|---------------------------|
| hydra._internal...basic_sweeper.BasicSweeper      | hydra_plugins/fashion_lenet_sweeper  | Hydra's grid sweeper has  |
|   (subclassed: setup, sweep, get_job_batch,       |                                      | no public class to extend |
|   validate_batch_is_legal; self.config,           |                                      |                           |
|   self.hydra_context)                             |                                      |                           |
| BaseSubmititLauncher's `_EXECUTOR` class attribute| hydra_plugins/fashion_lenet_fused_   | how the submitit plugin's |
|   and `params`                                    |   launcher (fused_slurm)             | own launchers subclass it |
| the logger name hydra._internal...basic_launcher  | console.py (drops its per-job dump)  | a logger name, not code   |
"""

import inspect
import logging
import re

from conftest import PROJECT_ROOT

ALLOWED = {  # file -> the internal names it may use (the table above)
    "src/hydra_plugins/fashion_lenet_sweeper.py": {"hydra._internal.core_plugins.basic_sweeper"},
    "src/fashion_lenet/console.py": {"hydra._internal.core_plugins.basic_launcher"},
}
PRIVATE = re.compile(
    r"hydra\._internal[\w.]*|hydra\.core\.utils import[^\n]*\b_\w+|\._return_value|trainer\._\w+|_checkpoint_connector"
    r"|JobRuntime|__getattr__"
)


def test_the_code_uses_no_library_internal_outside_the_list():
    files = [*PROJECT_ROOT.glob("src/**/*.py"), PROJECT_ROOT / "train.py"]
    found = {}
    for path in files:
        name = str(path.relative_to(PROJECT_ROOT))
        uses = set(PRIVATE.findall(path.read_text())) - ALLOWED.get(name, set())
        if uses:
            found[name] = uses
    assert not found  # each use of an internal goes through the list above


def test_hydras_basic_sweeper_still_has_what_the_checked_sweeper_overrides_and_reads():
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    assert list(inspect.signature(BasicSweeper.setup).parameters) == ["self", "hydra_context", "task_function",
                                                                      "config"]  # fmt: skip
    assert list(inspect.signature(BasicSweeper.sweep).parameters) == ["self", "arguments"]
    assert list(inspect.signature(BasicSweeper.get_job_batch).parameters) == ["self"]
    assert list(inspect.signature(BasicSweeper.validate_batch_is_legal).parameters) == ["self", "batch"]
    source = inspect.getsource(BasicSweeper)
    for attribute in ("self.config", "self.hydra_context", "self.validate_batch_is_legal(", "self.get_job_batch("):
        assert attribute in source, attribute  # set in setup / called by sweep, as the subclass relies on


def test_the_submitit_plugin_still_names_its_executor_per_launcher_class():
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
        BaseSubmititLauncher,
        LocalLauncher,
        SlurmLauncher,
    )

    assert (LocalLauncher._EXECUTOR, SlurmLauncher._EXECUTOR) == ("local", "slurm")
    assert "self.params" in inspect.getsource(BaseSubmititLauncher.__init__)


def test_hydras_basic_launcher_still_logs_under_its_module_name():
    import hydra._internal.core_plugins.basic_launcher as basic_launcher

    assert basic_launcher.log is logging.getLogger("hydra._internal.core_plugins.basic_launcher")
