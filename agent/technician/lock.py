"""The state-folder lock: the daemon holds it while it runs, so a technician tool that must not
run beside it (reset, bind) can tell, and whom to stop (the PID is written in the file).

`fcntl.flock` on `<state_dir>/agent.lock`: the kernel drops it when the holder exits, even on
SIGKILL, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

LOCK_NAME = "agent.lock"


class StateLocked(Exception):  # noqa: N818 (reads as the answer it is)
    """Another process (the daemon) holds the state folder."""

    def __init__(self, path: Path, pid: int | None) -> None:
        self.path, self.pid = path, pid
        who = f"process {pid}" if pid else "another process"
        super().__init__(f"{path} is held by {who}: the agent is running")


def lock_path(state_dir: Path) -> Path:
    return state_dir / LOCK_NAME


class StateLock:
    """An exclusive hold on the state folder, released by `release()` or by process exit."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def acquire(cls, state_dir: Path) -> StateLock:
        """Take the lock now or raise StateLocked (never waits)."""
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = lock_path(state_dir)
        writable = True
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except PermissionError:
            # made by another user: a read-only descriptor locks just as well (no PID written)
            fd, writable = os.open(path, os.O_RDONLY | os.O_CLOEXEC), False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateLocked(path, holder_pid(state_dir)) from None
        if writable:
            if os.geteuid() == 0:  # sudo: leave the file to the folder's owner, the agent's user
                folder = state_dir.stat()
                os.fchown(fd, folder.st_uid, folder.st_gid)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        return cls(fd, path)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor drops the flock


def holder_pid(state_dir: Path) -> int | None:
    """The PID written by the current holder (None if unreadable)."""
    try:
        return int(lock_path(state_dir).read_text().strip())
    except (OSError, ValueError):
        return None


def is_held(state_dir: Path) -> bool:
    if not state_dir.is_dir():
        return False
    try:
        StateLock.acquire(state_dir).release()
    except StateLocked:
        return True
    except OSError:
        return False  # cannot even open it: nothing of ours runs there
    return False


def service_of(pid: int) -> str | None:
    """The systemd service a process runs in (from its cgroup), if any."""
    try:
        return service_in(Path(f"/proc/{pid}/cgroup").read_text())
    except OSError:
        return None


def service_in(cgroup: str) -> str | None:
    """`0::/system.slice/dispenser-agent.service` -> `dispenser-agent.service`."""
    for line in cgroup.splitlines():
        name = line.split(":", 2)[-1].rstrip("/").rsplit("/", 1)[-1]
        if name.endswith(".service"):
            return name
    return None


def stop_holder(state_dir: Path, timeout_s: float = 30.0) -> bool:
    """Stop the daemon holding the lock and wait (bounded) until the lock is free. Under systemd
    through `systemctl stop` (a SIGTERM alone would be restarted: Restart=always), else SIGTERM."""
    pid = holder_pid(state_dir)
    if pid is None or pid == os.getpid():
        return not is_held(state_dir)
    service = service_of(pid)
    systemctl = shutil.which("systemctl")
    if service is not None and systemctl is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [systemctl, "stop", service], check=False, timeout=timeout_s, capture_output=True
            )
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_held(state_dir):
            return True
        time.sleep(0.1)
    return False
