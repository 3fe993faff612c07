"""Project commands forked from a process that has already imported torch, Lightning and Hydra (an Android-style
zygote): each command then starts in ~0.1 s instead of the 4-6 s its imports take on a 2-core CPU. The test
suite starts ~80 commands, so this is about a third of its CPU time.

A command still runs as `python <script or -m module> args...` would: its own process (forked from the zygote,
which never ran torch code, so no thread pool is inherited), working directory, environment, argv, stdin from
/dev/null, stdout and stderr to files, `__main__` run by runpy, and the interpreter's normal exit (atexit
handlers, thread joins). What it cannot change: environment variables read when those libraries were imported
(none the project's tests set), and `sys.modules` (a test of what a command imports runs it fresh: run_cli).

    zygote = Zygote.start(python_path)       # once per test process
    zygote.run(["train.py", "-m", ...], cwd, env, stdout_path, stderr_path, timeout) -> exit code
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

# The libraries only: a project module run with -m must not be imported before runpy runs it (runpy warns).
PRELOAD = ("torch", "torchvision", "torchmetrics", "lightning.pytorch", "hydra", "omegaconf", "optuna", "tensorboard",
           "matplotlib.pyplot")  # fmt: skip


class Zygote:
    def __init__(self, process: subprocess.Popen, address: str):
        self.process, self.address = process, address

    @classmethod
    def start(cls, env: dict[str, str]) -> Zygote:
        address = os.path.join(tempfile.mkdtemp(prefix="zygote-"), "socket")
        process = subprocess.Popen([sys.executable, __file__, address], env=env, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not os.path.exists(address):  # it binds once everything is imported
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the zygote did not start (exit code {process.poll()})")
            time.sleep(0.05)
        return cls(process, address)

    def run(self, argv: list[str], cwd: str, env: dict[str, str], stdout: str, stderr: str, timeout: float) -> int:
        """Run `python *argv` forked from the zygote; its exit code (negative: killed by that signal; -9 also when
        it ran past `timeout` seconds)."""
        with socket.socket(socket.AF_UNIX) as connection:
            connection.connect(self.address)
            request = {"argv": argv, "cwd": cwd, "env": env, "stdout": stdout, "stderr": stderr, "timeout": timeout}
            connection.sendall(json.dumps(request).encode() + b"\n")
            reply = connection.makefile().readline()
        return json.loads(reply)["returncode"]

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def serve(address: str) -> None:
    """The zygote: import, then fork a watcher per request; the watcher forks the command and reports its end."""
    for module in PRELOAD:
        __import__(module)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # watchers are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(address)
    listener.listen(64)
    while True:
        connection, _ = listener.accept()
        if os.fork() == 0:  # the watcher
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # it waits for its command, which waits for its own
            request = json.loads(connection.makefile().readline())
            command = os.fork()
            if command == 0:
                connection.close()
                run_command(**request)  # raises SystemExit: the interpreter exits as after any script
            code = watch(command, request["timeout"])
            connection.sendall(json.dumps({"returncode": code}).encode() + b"\n")
            os._exit(0)
        connection.close()


def watch(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)  # the command and what it started
            os.waitpid(pid, 0)
            return -signal.SIGKILL
        time.sleep(0.02)


def run_command(argv: list[str], cwd: str, env: dict[str, str], stdout: str, stderr: str, timeout: float) -> None:
    os.setpgid(0, 0)  # its own process group: a timeout stops its workers too
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path, mode in ((0, os.devnull, os.O_RDONLY), (1, stdout, os.O_WRONLY), (2, stderr, os.O_WRONLY)):
        os.dup2(os.open(path, mode | (os.O_CREAT | os.O_TRUNC if fd else 0)), fd)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own streams
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.path[0] = cwd if argv[0] in ("-m", "-c") else str(Path(cwd, argv[0]).resolve().parent)  # as `python` does
    code = 0
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        elif argv[0] == "-c":
            sys.argv = ["-c", *argv[2:]]
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
        else:
            sys.argv = list(argv)
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as stop:
        code = stop.code
    except BaseException:  # noqa: BLE001 - what `python` does with an uncaught exception
        traceback.print_exc()
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    serve(sys.argv[1])
