"""Child processes of the local runtime, and the guarantee that none outlives it.

Every child starts in its own session (so a signal reaches the whole process group it may
spawn), asks the kernel for SIGTERM when its parent dies (so even a SIGKILL of the demo leaves
nothing behind), and is registered here; `stop_all` runs from `atexit`, from the signal
handlers and from the runtime's own cleanup, whichever comes first.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ChildProcesses:
    """A registry of child processes that can all be stopped at once, idempotently."""

    def __init__(self) -> None:
        self._procs: dict[int, subprocess.Popen] = {}
        self._adopted: set[int] = set()  # children that do not lead a process group of their own
        self._lock = threading.Lock()
        atexit.register(self.stop_all)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen:
        log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - the child owns it
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            if log_path:
                log.close()
        with self._lock:
            self._procs[proc.pid] = proc
        return proc

    def adopt(self, proc: subprocess.Popen) -> subprocess.Popen:
        """Register a child started elsewhere (in the caller's process group) for `stop_all`."""
        with self._lock:
            self._procs[proc.pid] = proc
            self._adopted.add(proc.pid)
        return proc

    @property
    def running(self) -> list[subprocess.Popen]:
        with self._lock:
            return [p for p in self._procs.values() if p.poll() is None]

    def signal(self, proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
        """Send `sig` to the child's whole process group (it leads its own session)."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if proc.pid in self._adopted:
                    proc.send_signal(sig)
                else:
                    os.killpg(proc.pid, sig)

    def forget(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.pop(proc.pid, None)
            self._adopted.discard(proc.pid)

    def stop(self, proc: subprocess.Popen, grace_seconds: float = 10.0) -> int | None:
        """SIGTERM, wait up to the grace period, then SIGKILL the group. Blocking."""
        self.signal(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            self.signal(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._kill_group(proc)
        self.forget(proc)
        return proc.returncode

    def stop_all(self, grace_seconds: float = 5.0) -> None:
        """Stop every registered child: all get SIGTERM at once, then stragglers SIGKILL."""
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            self.signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for proc in procs:
            self.signal(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            self._kill_group(proc)
            self.forget(proc)

    def _kill_group(self, proc: subprocess.Popen) -> None:
        """The leader may be gone while something it spawned is still in its group."""
        if proc.pid in self._adopted:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        _wait_group_gone(proc.pid)


def _wait_group_gone(group: int, timeout: float = 3.0) -> None:
    """Wait until no live process is left in the group (a SIGKILL is delivered asynchronously;
    zombies whose parent is gone may linger unreaped where PID 1 does not reap, and count as gone)."""
    deadline = time.monotonic() + timeout
    while _group_members(group) and time.monotonic() < deadline:
        time.sleep(0.02)


def _group_members(group: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == group and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def processes_mentioning(marker: str) -> list[int]:
    """PIDs of live processes whose command line contains `marker` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next(
                (line for line in (entry / "status").read_text().splitlines() if line.startswith("State:")),
                "",
            )
        except OSError:
            continue
        if marker in cmdline and "zombie" not in state:
            found.append(int(entry.name))
    return found
