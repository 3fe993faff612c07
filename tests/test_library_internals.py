"""The libraries through their public APIs only; the few internals with no public alternative are listed in ALLOWED,
each pinned by a test that fails when the internal changes (so a release breaks loudly, not silently).

The rule, checked on every .py file of src/ and train.py by walking its syntax tree (`internal_uses`): a name of
torch, torchvision, torchmetrics, Lightning (lightning, lightning_fabric, pytorch_lightning), Hydra and its plugins
(not the project's own hydra_plugins.fashion_lenet_*), omegaconf, optuna, submitit or joblib is internal when one
part of it starts with `_` (not a dunder). It is found in
- imports: `from hydra._internal.x import Y`, `import torch._dynamo`;
- attribute chains from an imported name: `nn.modules.batchnorm._BatchNorm`;
- `obj._name` on any other object (also through getattr/setattr/hasattr), unless the project defines `_name`;
  `self._name` in a class with a library base: the base's own `_name` (used or overridden), or one the project's
  class never sets (the library's state);
- fields a library base sets to an object of a private class (`self.sweeper`, an optuna plugin `_impl` object),
  and what the project reads or sets on that object, also through a local name (`search = self.sweeper`);
- strings naming a private module or logger: "hydra._internal.core_plugins.basic_launcher" (not docstrings).
Not found: public-looking fields of private classes on objects the code did not get from `self` (none today).

| internal (as the rule names it)                    | used by                  | why                                 |
|----------------------------------------------------|--------------------------|-------------------------------------|
| hydra._internal...basic_sweeper.BasicSweeper       | fashion_lenet_sweeper    | Hydra's grid sweeper has no         |
|   (subclassed: setup, sweep, get_job_batch,        |                          | public class to extend              |
|   validate_batch_is_legal; self.config,            |                          |                                     |
|   self.hydra_context)                              |                          |                                     |
| OptunaSweeper.sweeper, an _impl.OptunaSweeperImpl: | fashion_lenet_sweeper    | resume continues the study: no      |
|   its study_name, storage, sampler, n_trials,      |   (ResumableOptuna-      | public way to set the trials left,  |
|   job_idx                                          |   Sweeper._continue)     | the next job number, a new seed     |
| ... and its launcher and storage (set)             | fashion_lenet_sweeper    | pruning: no public way to tell a    |
|                                                    |   (ResumableOptuna-      | job its trial, or to keep a trial   |
|                                                    |   Sweeper.setup)         | its job pruned from being completed |
| BaseSubmititLauncher's `_EXECUTOR` (and `params`)  | fashion_lenet_fused_     | how the submitit plugin's own       |
|                                                    |   launcher (fused_slurm) | launchers subclass it               |
| the loggers hydra._internal...basic_launcher and   | console.py (drop their   | logger names, not code              |
|   hydra_plugins.hydra_joblib_launcher._core        |   per-job dump)          |                                     |
| lightning.pytorch.utilities._pytree                | console.py               | a module name in a warnings filter  |
| torch.nn.modules.batchnorm._BatchNorm and its      | batchnorm.py             | torch's BatchNorm parameters,       |
|   _check_input_dim                                 |   (ManualBatchNorm)      | buffers and checks; its own forward |
"""

from __future__ import annotations

import ast
import importlib
import inspect
import logging
import re
import sys
import warnings
from dataclasses import dataclass, field
from functools import cache

import pytest
from conftest import PROJECT_ROOT

SWEEPER = "src/hydra_plugins/fashion_lenet_sweeper.py"
CONSOLE = "src/fashion_lenet/sweep/console.py"
OPTUNA_IMPL = "hydra_plugins.hydra_optuna_sweeper._impl.OptunaSweeperImpl"
OPTUNA_FIELDS = ("study_name", "storage", "sampler", "n_trials", "job_idx")  # what ResumableOptunaSweeper reads/sets
OPTUNA_RESUME = "resume=true continues the Optuna study: the trials left, the next job number, a new sampler seed"
OPTUNA_PRUNING = "pruning: each job told its trial (the launcher), a pruned trial kept pruned (the storage)"
EXECUTOR = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.BaseSubmititLauncher._EXECUTOR"
BATCH_NORM = "torch.nn.modules.batchnorm._BatchNorm"
# (file, internal) -> why; the table above says it longer. Each internal is pinned by a test marked @pins(...).
ALLOWED = {
    (SWEEPER, "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"): "Hydra's grid sweeper, subclassed",
    (SWEEPER, "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper.sweeper"): OPTUNA_RESUME,
    **{(SWEEPER, f"{OPTUNA_IMPL}.{name}"): OPTUNA_RESUME for name in OPTUNA_FIELDS},
    (SWEEPER, f"{OPTUNA_IMPL}.launcher"): OPTUNA_PRUNING,
    ("src/hydra_plugins/fashion_lenet_fused_launcher.py", EXECUTOR): "the submitit plugin's way to name a cluster",
    (CONSOLE, "hydra._internal.core_plugins.basic_launcher"): "a logger name (per-job dump)",
    (CONSOLE, "hydra_plugins.hydra_joblib_launcher._core"): "a logger name (per-job dump)",
    (CONSOLE, "lightning.pytorch.utilities._pytree"): "a module name in a warnings filter",
    ("src/fashion_lenet/training/batchnorm.py", BATCH_NORM): "torch's BatchNorm state, the forward written out by hand",
    ("src/fashion_lenet/training/batchnorm.py", f"{BATCH_NORM}._check_input_dim"): "BatchNorm1d/2d's input check, kept",
}
PINNED: set[str] = set()


def pins(*internals: str):
    """Marks the test that fails when these internals change."""

    def mark(test):
        PINNED.update(internals)
        return test

    return mark


# ---- the rule ----------------------------------------------------------------------------------------------------

LIBRARIES = {"torch", "torchvision", "torchmetrics", "lightning", "lightning_fabric", "pytorch_lightning", "hydra",
             "hydra_plugins", "omegaconf", "optuna", "submitit", "joblib"}  # fmt: skip
OWN_PLUGINS = "hydra_plugins.fashion_lenet_"  # the project's modules in Hydra's plugin package
DOTTED = re.compile(r"(?<![\w.])[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")
ATTRIBUTE_FUNCTIONS = {"getattr", "setattr", "hasattr", "delattr"}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def is_library(path: str) -> bool:
    return path.split(".")[0] in LIBRARIES and not path.startswith(OWN_PLUGINS)


def has_private_part(path: str) -> bool:
    return any(is_private(part) for part in path.split("."))


def dotted(node: ast.expr) -> tuple[ast.expr, list[str]]:
    """`a.b.c` -> (the node `a`, ["b", "c"])."""
    attributes = []
    while isinstance(node, ast.Attribute):
        attributes.insert(0, node.attr)
        node = node.value
    return node, attributes


def imported_names(tree: ast.AST, package: str = "") -> dict[str, str]:
    """Each name a module binds by import, anywhere in it -> the dotted path it stands for. Relative imports are
    resolved against `package` (a library's own); without one they are the project's, and left out."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                root = alias.name.split(".")[0]  # `import a.b` binds `a`
                names[alias.asname or root] = alias.name if alias.asname else root
        elif isinstance(node, ast.ImportFrom) and (package or not node.level):
            module = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0]
                module = f"{parent}.{module}" if module else parent
            for alias in node.names:
                names[alias.asname or alias.name] = f"{module}.{alias.name}"
    return names


@cache
def resolve(path: str):
    """The object a library's dotted path names (None if it names none)."""
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:end]))
        except ImportError:
            continue
        for part in parts[end:]:
            found = getattr(found, part, None)
        return found
    return None


@cache
def module_tree(name: str) -> ast.Module | None:
    try:
        return ast.parse(inspect.getsource(sys.modules[name]))
    except (KeyError, OSError, TypeError):
        return None


@cache
def private_class_fields(cls: type) -> dict[str, tuple[str, str]]:
    """Public fields a library class (or a library class it inherits from) sets to an object of a private class,
    `self.X = C(...)` with C in a private module or named privately -> {X: (the class that sets it, C's path)}."""
    fields = {}
    for klass in reversed(cls.__mro__):
        tree = module_tree(klass.__module__) if is_library(klass.__module__) else None
        if tree is None:
            continue
        names = imported_names(tree, sys.modules[klass.__module__].__package__ or "")
        names |= {node.name: f"{klass.__module__}.{node.name}" for node in tree.body if isinstance(node, ast.ClassDef)}
        for node in tree.body:
            if not (isinstance(node, ast.ClassDef) and node.name == klass.__name__):
                continue
            for assign in ast.walk(node):
                if not (isinstance(assign, ast.Assign) and isinstance(assign.value, ast.Call)):
                    continue
                root, attributes = dotted(assign.value.func)
                if not (isinstance(root, ast.Name) and root.id in names):
                    continue
                made = ".".join([names[root.id], *attributes])
                for target in assign.targets if has_private_part(made) else []:
                    if _on_self(target) and not is_private(target.attr):
                        fields[target.attr] = (f"{klass.__module__}.{klass.__qualname__}", made)
    return fields


def _on_self(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")


def assigned(node: ast.AST) -> list[ast.expr]:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
        node, (ast.AnnAssign, ast.AugAssign)) else []  # fmt: skip
    return [element for target in targets for element in (target.elts if isinstance(target, ast.Tuple) else [target])]


def defined_names(node: ast.AST) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    return {target.id for target in assigned(node) if isinstance(target, ast.Name)}


@dataclass
class ProjectClass:
    own: set[str] = field(default_factory=set)  # what its body defines and its methods set on self
    bases: list[str] = field(default_factory=list)  # library paths, or names of project classes


def project_classes(tree: ast.Module, imports: dict[str, str]) -> dict[str, ProjectClass]:
    classes: dict[str, ProjectClass] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        found = classes.setdefault(node.name, ProjectClass())
        for base in node.bases:
            root, attributes = dotted(base)
            if isinstance(root, ast.Name) and root.id in imports:
                found.bases.append(".".join([imports[root.id], *attributes]))
            elif isinstance(root, ast.Name):
                found.bases.append((attributes or [root.id])[-1])
        for statement in node.body:
            found.own |= defined_names(statement)
        found.own |= {target.attr for inner in ast.walk(node) for target in assigned(inner) if _on_self(target)}
    return classes


class InternalUses(ast.NodeVisitor):
    """Collects a module's uses of library internals: {internal: first line}."""

    def __init__(self, imports: dict[str, str], classes: dict[str, ProjectClass], own_private_names: set[str]):
        self.imports = {name: path for name, path in imports.items() if is_library(path)}
        self.classes, self.own_private_names = classes, own_private_names
        self.found: dict[str, int] = {}
        self.class_names: list[str] = []  # the classes the visit is inside, innermost last
        self.aliases: dict[str, str] = {}  # local name -> the private class of the object it holds
        self.docstrings: set[int] = set()

    def report(self, internal: str, node: ast.AST) -> None:
        self.found.setdefault(internal, node.lineno)

    def library_bases(self, name: str) -> list[str]:
        """The library classes a project class derives from, through the project's own classes."""
        bases, todo, seen = [], [name], set()
        while todo:
            current = todo.pop(0)
            for base in self.classes.get(current, ProjectClass()).bases if current not in seen else []:
                (bases if is_library(base) else todo).append(base)
            seen.add(current)
        return bases

    def own_names(self, name: str) -> set[str]:
        names, todo, seen = set(), [name], set()
        while todo:
            current = todo.pop()
            if current in self.classes and current not in seen:
                names |= self.classes[current].own
                todo.extend(self.classes[current].bases)
            seen.add(current)
        return names

    def private_class_field(self, name: str) -> tuple[str, str] | None:
        for base in self.library_bases(self.class_names[-1]) if self.class_names else []:
            cls = resolve(base)
            if isinstance(cls, type) and name in private_class_fields(cls):
                return private_class_fields(cls)[name]
        return None

    def held_private_class(self, node: ast.expr) -> str | None:
        """The private library class of the object `node` holds, if the code got it from a library base's field."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        held = self.private_class_field(node.attr) if _on_self(node) else None
        return held[1] if held else None

    def note_docstring(self, node: ast.AST) -> None:
        body = getattr(node, "body", [])
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            self.docstrings.add(id(body[0].value))

    def visit_Module(self, node: ast.Module) -> None:
        self.note_docstring(node)
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if is_library(alias.name) and has_private_part(alias.name):
                self.report(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names if not node.level else []:
            if is_library(path := f"{node.module}.{alias.name}") and has_private_part(path):
                self.report(path, node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.note_docstring(node)
        overriding = {name for statement in node.body for name in defined_names(statement) if is_private(name)}
        for base in self.library_bases(node.name):  # a private hook of the library, overridden
            for name in sorted(overriding):
                if hasattr(resolve(base), name):
                    self.report(f"{base}.{name}", node)
        self.class_names.append(node.name)
        self.generic_visit(node)
        self.class_names.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.note_docstring(node)
        outer, self.aliases = self.aliases, dict(self.aliases)
        self.generic_visit(node)
        self.aliases = outer

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Assign(self, node: ast.Assign) -> None:
        if held := self.held_private_class(node.value):
            self.aliases |= {target.id: held for target in node.targets if isinstance(target, ast.Name)}
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.check_attribute(node)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func, args = node.func, node.args
        if (isinstance(func, ast.Name) and func.id in ATTRIBUTE_FUNCTIONS and len(args) >= 2
                and isinstance(args[1], ast.Constant) and isinstance(args[1].value, str)):  # fmt: skip
            self.check_attribute(ast.Attribute(value=args[0], attr=args[1].value, lineno=node.lineno))
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and id(node) not in self.docstrings:
            for path in DOTTED.findall(node.value.replace("\\.", ".")):  # a regex's `a\.b` too
                if is_library(path) and has_private_part(path):
                    self.report(path, node)

    def check_attribute(self, node: ast.Attribute) -> None:
        root, attributes = dotted(node)
        if isinstance(root, ast.Name) and root.id in self.imports:
            if is_private(node.attr):
                self.report(".".join([self.imports[root.id], *attributes]), node)
        elif held := self.held_private_class(node.value):
            self.report(f"{held}.{node.attr}", node)
        elif _on_self(node) and self.class_names:
            self.check_own_attribute(node)
        elif is_private(node.attr) and node.attr not in self.own_private_names:
            self.report(ast.unparse(node), node)

    def check_own_attribute(self, node: ast.Attribute) -> None:
        """`self.X` in a class of the project: the library base's unless the project's class defines X alone."""
        name, bases = node.attr, self.library_bases(self.class_names[-1])
        if held := self.private_class_field(name):
            self.report(f"{held[0]}.{name}", node)
        elif is_private(name):
            base = next((base for base in bases if hasattr(resolve(base), name)), None)
            if base is None and bases and name not in self.own_names(self.class_names[-1]):
                base = bases[0]  # state the library's code set on its object
            if base is not None:
                self.report(f"{base}.{name}", node)


def internal_uses(sources: dict[str, str]) -> dict[str, dict[str, int]]:
    """{file: {internal: first line}} for the files given (the project, or a snippet standing in for it)."""
    trees = {file: ast.parse(source) for file, source in sources.items()}
    imports = {file: imported_names(tree) for file, tree in trees.items()}
    classes: dict[str, ProjectClass] = {}
    own_private_names = set()
    for file, tree in trees.items():
        for name, found in project_classes(tree, imports[file]).items():
            merged = classes.setdefault(name, ProjectClass())
            merged.own |= found.own
            merged.bases += found.bases
        for node in ast.walk(tree):
            attributes = {target.attr for target in assigned(node) if isinstance(target, ast.Attribute)}
            own_private_names |= {name for name in defined_names(node) | attributes if is_private(name)}
    found = {}
    for file, tree in trees.items():
        visitor = InternalUses(imports[file], classes, own_private_names)
        visitor.visit(tree)
        if visitor.found:
            found[file] = visitor.found
    return found


def _project_sources() -> dict[str, str]:
    files = [*PROJECT_ROOT.glob("src/**/*.py"), PROJECT_ROOT / "train.py"]
    return {str(path.relative_to(PROJECT_ROOT)): path.read_text() for path in sorted(files)}


def test_the_code_uses_no_library_internal_outside_the_list():
    found = {(file, internal): line for file, uses in internal_uses(_project_sources()).items()
             for internal, line in uses.items()}  # fmt: skip
    unlisted = {f"{file}:{line} {use}" for (file, use), line in found.items() if (file, use) not in ALLOWED}
    assert not unlisted  # use a public API, or list the internal in ALLOWED with a test that pins it
    assert set(ALLOWED) <= set(found)  # an internal no longer used leaves the list (and its test)


SNIPPET = '''
"""A docstring may name hydra._internal.core_plugins.basic_launcher."""
import logging
import warnings

import hydra_plugins.hydra_joblib_launcher._core
import hydra_plugins.fashion_lenet_sweeper
from hydra._internal.utils import run_and_report
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from torch import nn


class Norm(nn.modules.batchnorm._BatchNorm):
    def _check_input_dim(self, x):
        self._seen = x

    def forward(self, x):
        return self._seen, self._version, x._version, getattr(x, "_cdata"), hooks._own_helper()


class Resumable(OptunaSweeper):
    def setup(self):
        search = self.sweeper
        search.n_trials = 1


def _own_helper():
    pass


def fit(trainer):
    trainer._checkpoint_connector.restore()
    logging.getLogger("hydra._internal.core_plugins.basic_launcher")
    warnings.filterwarnings("ignore", module=r"lightning\\.pytorch\\.utilities\\._pytree")
'''


def test_the_rule_finds_each_kind_of_internal_and_nothing_of_the_projects_own():
    assert set(internal_uses({"snippet.py": SNIPPET})["snippet.py"]) == {
        "hydra_plugins.hydra_joblib_launcher._core",  # a private module imported
        "hydra._internal.utils.run_and_report",  # a name from a private module
        "torch.nn.modules.batchnorm._BatchNorm",  # an attribute chain from an imported name
        "torch.nn.modules.batchnorm._BatchNorm._check_input_dim",  # a private hook overridden
        "torch.nn.modules.batchnorm._BatchNorm._version",  # the base's private name, read on self
        "x._version",  # a private attribute of another object
        "x._cdata",  # the same through getattr
        "trainer._checkpoint_connector",
        "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper.sweeper",  # a private class behind a field
        "hydra_plugins.hydra_optuna_sweeper._impl.OptunaSweeperImpl.n_trials",  # set on it through a local name
        "hydra._internal.core_plugins.basic_launcher",  # a logger's name
        "lightning.pytorch.utilities._pytree",  # a module's name, as a regex
    }  # not self._seen, hooks._own_helper (the project's), the docstring, hydra_plugins.fashion_lenet_*


def test_every_listed_internal_is_pinned_by_a_test():
    assert {internal for _, internal in ALLOWED} <= PINNED


def test_no_class_stands_in_for_another_by_forwarding_attributes():
    """An object that imitates a library class by `__getattr__` breaks on a minor release without an error."""
    forwarding = [file for file, source in _project_sources().items() for node in ast.walk(ast.parse(source))
                  if isinstance(node, ast.FunctionDef) and node.name == "__getattr__"]  # fmt: skip
    assert not forwarding


# ---- what the listed internals must still be -----------------------------------------------------------------


@pins("hydra._internal.core_plugins.basic_sweeper.BasicSweeper")
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


@pins("hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper.sweeper",
      *(f"{OPTUNA_IMPL}.{name}" for name in OPTUNA_FIELDS))  # fmt: skip
def test_optunas_sweeper_still_keeps_the_study_fields_that_resume_sets_and_sweep_reads():
    from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

    sweeper = OptunaSweeper(sampler="a sampler", direction="maximize", storage="sqlite:///study.db",
                            study_name="study", n_trials=4, n_jobs=1, max_failure_rate=0.0, search_space=None,
                            custom_search_space=None, params=None)  # fmt: skip
    search = sweeper.sweeper
    assert isinstance(search, OptunaSweeperImpl)
    assert (search.sampler, search.storage, search.study_name, search.n_trials, search.job_idx) == (
        "a sampler", "sqlite:///study.db", "study", 4, 0)  # fmt: skip
    # setup starts job numbers at 0 (so resume sets job_idx after it); sweep creates the study from these fields,
    # runs the n_trials it finds, and numbers jobs from job_idx
    assert "self.job_idx = 0" in inspect.getsource(OptunaSweeperImpl.setup)
    sweep = inspect.getsource(OptunaSweeperImpl.sweep)
    reads = ("study_name=self.study_name", "storage=self.storage", "sampler=self.sampler",
             "n_trials_to_go = self.n_trials", "initial_job_idx=self.job_idx",
             "self.job_idx += len(returns)")  # fmt: skip
    for read in reads:
        assert read in sweep, read


@pins(f"{OPTUNA_IMPL}.launcher")
def test_optunas_sweeper_still_asks_a_batch_then_launches_it_with_its_launcher_then_tells_each_trial():
    """What pruning relies on (fashion_lenet_sweeper.TrialLinkingLauncher, pruned_trials_stay_pruned): setup sets
    the launcher field; sweep asks the batch's trials, launches them in that order through self.launcher, and only
    then tells each trial its result, through the study (so through its storage)."""
    from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

    assert "self.launcher = Plugins.instance().instantiate_launcher(" in inspect.getsource(OptunaSweeperImpl.setup)
    sweep = inspect.getsource(OptunaSweeperImpl.sweep)
    steps = ("trials = [study.ask() for _ in range(batch_size)]", "self._configure_trials(",
             "returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)",
             "for trial, ret in zip(trials, returns):",
             "study.tell(trial=trial, state=state, values=values)")  # fmt: skip
    assert [sweep.index(step) for step in steps] == sorted(sweep.index(step) for step in steps)


@pins(EXECUTOR)
def test_the_submitit_plugin_still_names_its_executor_per_launcher_class():
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
        BaseSubmititLauncher,
        LocalLauncher,
        SlurmLauncher,
    )

    assert (LocalLauncher._EXECUTOR, SlurmLauncher._EXECUTOR) == ("local", "slurm")
    assert "self.params" in inspect.getsource(BaseSubmititLauncher.__init__)


@pins("hydra._internal.core_plugins.basic_launcher", "hydra_plugins.hydra_joblib_launcher._core")
def test_hydras_launchers_still_log_each_jobs_overrides_under_their_module_names():
    from fashion_lenet.sweep.console import LAUNCHER_NOISE

    assert {name for name, _ in LAUNCHER_NOISE} == {"hydra._internal.core_plugins.basic_launcher",
                                                    "hydra_plugins.hydra_joblib_launcher._core"}  # fmt: skip
    for name, start in LAUNCHER_NOISE:
        module = importlib.import_module(name)
        assert module.log is logging.getLogger(name), name
        assert f'"{start.encode("unicode_escape").decode()}' in inspect.getsource(module), name  # "\t#{idx} : ..."


@pins("lightning.pytorch.utilities._pytree")
def test_the_leafspec_warning_console_silences_is_still_raised_from_lightnings_pytree_module():
    from lightning.pytorch.utilities.combined_loader import CombinedLoader

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        CombinedLoader({"train": [1, 2]}, "max_size_cycle")  # as every fit builds one
    raised = {w.filename for w in caught if "isinstance(treespec, LeafSpec)` is deprecated" in str(w.message)}
    # the warnings filter matches by module name: the file it is raised from must be that module's
    assert raised == {importlib.import_module("lightning.pytorch.utilities._pytree").__file__}


@pins(BATCH_NORM, f"{BATCH_NORM}._check_input_dim")
def test_torchs_batchnorm_base_still_holds_the_state_and_checks_manual_batchnorm_uses():
    import torch
    from torch import nn
    from torch.nn.modules.batchnorm import _BatchNorm

    from fashion_lenet.training.batchnorm import ManualBatchNorm1d, ManualBatchNorm2d, _ManualBatchNorm

    assert issubclass(nn.BatchNorm1d, _BatchNorm) and issubclass(nn.BatchNorm2d, _BatchNorm)  # or the MRO breaks
    assert list(inspect.signature(_BatchNorm.__init__).parameters)[:6] == [
        "self", "num_features", "eps", "momentum", "affine", "track_running_stats"]  # fmt: skip
    norm = ManualBatchNorm2d(3)
    assert type(norm).forward is _ManualBatchNorm.forward  # the hand-written forward, not torch's
    for name in ("running_mean", "running_var", "weight", "bias"):
        assert getattr(norm, name).shape == (3,), name
    assert norm.num_batches_tracked.shape == ()
    assert (norm.momentum, norm.eps) == (0.1, 1e-5)
    norm(torch.zeros(2, 3, 4, 4))  # a 4-D batch passes the check; a 2-D one does not
    with pytest.raises(ValueError, match="expected 4D input"):
        norm(torch.zeros(2, 3))
    ManualBatchNorm1d(3)(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="expected 2D or 3D input"):
        ManualBatchNorm1d(3)(torch.zeros(2, 3, 4, 4))
