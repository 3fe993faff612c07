"""What a newcomer sees: the terminal of a run and of a sweep, and the sweep in a live TensorBoard."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

import pytest
from conftest import TINY, run_cli

TWO_EPOCHS = [*(o for o in TINY if not o.startswith("trainer.max_epochs")), "trainer.max_epochs=2"]
LRS = ("0.01", "0.001")
# What Lightning and Hydra print that says nothing to a user (fashion_lenet/sweep/console.py drops it)
NOISE = ("💡 Tip", "litlogger", "LeafSpec", "GPU available: False", "TPU available: False", "log_every_n_steps",
         "`weights_only` was not set", "Seed set to", "`Trainer.fit` stopped", "Restoring states from",
         "Loaded model weights from", "\t#0 : ", "srun")  # fmt: skip


@pytest.fixture(scope="module")
def login_node(tmp_path_factory) -> dict:
    """The environment of a cluster's login node: Slurm's `srun` on PATH (Lightning warns when it is unused).
    Every terminal here is checked with it: it must change nothing."""
    bin_dir = tmp_path_factory.mktemp("slurm_client")
    srun = bin_dir / "srun"
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_root, login_node) -> tuple[Path, subprocess.CompletedProcess]:
    """A 2-job sweep over the learning rate, 2 epochs each, as a user types it (on a login node)."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
    result = run_cli("train.py", "-m", f"optim.lr={','.join(LRS)}", *TWO_EPOCHS, f"hydra.sweep.dir={sweep_dir}",
                     env=login_node)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir, result


def _lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


def _message(line: str) -> str:
    """A console line without what its handler adds: `[time][logger][LEVEL] - ` (Hydra's) or `INFO: ` (Lightning's)."""
    return line.split("] - ", 1)[1] if "] - " in line else line.removeprefix("INFO: ")


def _assert_clean(lines: list[str]) -> None:
    assert not [line for line in lines if line.startswith("INFO: ")]  # Lightning's own handler: gone
    messages = [_message(line) for line in lines]
    assert len(messages) == len(set(messages)), "a message printed twice"
    assert not [line for line in lines if any(noise in line for noise in NOISE)]


def test_a_run_prints_its_result_once_and_none_of_the_noise(tmp_path, login_node):
    result = run_cli("train.py", *TINY, f"hydra.run.dir={tmp_path}", env=login_node)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = _lines(result)
    _assert_clean(lines)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    [end] = [_message(line) for line in lines if "completed in" in line]
    assert end.startswith(f"completed in {metrics['wall_time_s']:.0f} s: best epoch 0, val acc ")
    assert f"test acc {100 * metrics['test_acc']:.2f}%" in end and end.endswith(f"outputs in {tmp_path}")
    assert [_message(line) for line in (tmp_path / "train.log").read_text().splitlines()] == [end]


def test_a_sweep_prints_a_line_when_each_job_starts_and_ends_then_the_table(sweep):
    sweep_dir, result = sweep
    lines = _lines(result)
    _assert_clean(lines)
    job_lines = [_message(line) for line in lines if "] job " in line]
    assert [line.split(" completed")[0].split(" (sweep: ")[0] for line in job_lines] == [
        "[1/2] job 0: optim.lr=0.01", "[1/2] job 0", "[2/2] job 1: optim.lr=0.001", "[2/2] job 1",
    ]  # fmt: skip
    # the sweep's time so far; the time left once a job finished, from its pace; none once every job did
    progress = [re.search(r" \(sweep: ([^)]*)\)$", line).group(1) for line in job_lines]
    assert re.fullmatch(r"\d+ s in", progress[0]) and re.fullmatch(r"\d+ s in", progress[3]), progress
    assert all(re.fullmatch(r"\d+ s in, about \d+ s left", said) for said in progress[1:3]), progress
    for job, line in enumerate(job_lines[1::2]):
        metrics = json.loads((sweep_dir / str(job) / "metrics.json").read_text())
        assert line == (
            f"[{job + 1}/2] job {job} completed in {metrics['wall_time_s']:.0f} s: best epoch {metrics['best_epoch']}, "
            f"val acc {100 * metrics['best_val_acc']:.2f}%, test acc {100 * metrics['test_acc']:.2f}% (best checkpoint)"
            f" (sweep: {progress[2 * job + 1]})"
        )  # fmt: skip
        logged = [_message(line) for line in (sweep_dir / str(job) / "train.log").read_text().splitlines()]
        assert logged == job_lines[2 * job : 2 * job + 2]  # the job's log file has its own two lines
    assert result.stdout.count("| completed |") == 2  # the summary table, at the end
    assert lines[-1].startswith("| 1 | optim.lr=0.001 | completed |")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def tensorboard(logdir: Path, log_file: Path):
    """The installed `tensorboard` serving logdir on a free local port; stopped whatever happens."""
    port = _free_port()
    command = [str(Path(sys.executable).parent / "tensorboard"), "--logdir", str(logdir), "--host", "127.0.0.1",
               "--port", str(port), "--load_fast=false", "--reload_interval=1"]  # fmt: skip
    with open(log_file, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _get(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=10) as response:
        raw = response.read()
    return raw if response.headers.get_content_type() != "application/json" else json.loads(raw)


def _wait_for_runs(url: str, expected: set[str], log_file: Path, timeout: float = 90) -> None:
    deadline, runs = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            runs = set(_get(f"{url}/data/runs"))
            if runs == expected and all(_get(f"{url}/data/plugin/scalars/tags").get(run) for run in runs):
                return
        except OSError:  # not listening yet
            pass
        time.sleep(0.5)
    pytest.fail(f"TensorBoard showed runs {runs}, not {expected}; its log: {log_file.read_text()[-2000:]}")


def test_a_live_tensorboard_shows_the_sweep_under_readable_names(sweep, tmp_path):
    sweep_dir, _ = sweep
    metrics = {f"{job}/optim.lr={lr}": json.loads((sweep_dir / str(job) / "metrics.json").read_text())
               for job, lr in enumerate(LRS)}  # fmt: skip
    with tensorboard(sweep_dir, tmp_path / "tensorboard.log") as url:
        _wait_for_runs(url, set(metrics), tmp_path / "tensorboard.log")
        tags = _get(f"{url}/data/plugin/scalars/tags")
        for run, job in metrics.items():
            assert "epoch" not in tags[run]  # Lightning's epoch counter is the x axis, not a card of its own
            for tag in ("train/acc", "val/acc", "test/acc"):
                points = _get(f"{url}/data/plugin/scalars/scalars?{urlencode({'run': run, 'tag': tag})}")
                assert [step for _, step, _ in points] == [0, 1], (run, tag)  # one point per epoch, at its epoch
                history = [row[tag.replace("/", "_")] for row in job["history"]]
                assert [value for _, _, value in points] == pytest.approx(history)

        every_status = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
        request = {"experimentName": "", "startIndex": 0, "sliceSize": 10, "allowedStatuses": every_status,
                   "colParams": [], "aggregationType": "AGGREGATION_AVG"}  # fmt: skip
        groups = _get(f"{url}/data/plugin/hparams/session_groups", request)["sessionGroups"]
        assert sorted(group["name"] for group in groups) == sorted(metrics)  # the HPARAMS tab's Trial IDs
        for group in groups:
            job = metrics[group["name"]]
            assert group["hparams"]["lr"] == pytest.approx(job["lr"]) and group["hparams"]["model"] == "baseline"
            values = {value["name"]["tag"]: value["value"] for value in group["metricValues"]}
            assert values["hp/test_acc"] == pytest.approx(job["test_acc"], abs=1e-7)

        images = _get(f"{url}/data/plugin/images/tags")
        for run in metrics:
            assert {"test_best/misclassified", "test_best/confusion_matrix"} <= images[run].keys()
            query = urlencode({"run": run, "tag": "test_best/misclassified", "sample": 0})
            [sample] = _get(f"{url}/data/plugin/images/images?{query}")
            assert _get(f"{url}/data/plugin/images/individualImage?{sample['query']}").startswith(b"\x89PNG")
