"""One runner per matrix directory: an exclusive `fcntl.flock` on `<matrix_dir>/.lock`.

The kernel drops a flock when the last file descriptor of its holder closes, including when the
holder is killed with -9, so there is no stale lock to clean up by hand: a lock file whose
holder is gone is simply free, and the next runner takes it over (and says whose it was).

The file is never deleted: unlinking a lock file lets two runners lock two different inodes
under the same name. It holds the holder's pid and host for the message a refused runner
prints, and is emptied on a clean release, so a pid found in a free lock file means its runner
ended without releasing (killed, crashed). A held lock recorded by a runner on another host (a
results directory on a shared file system) is refused at once, naming that host: its pid says
nothing about the processes of this one.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import time
from pathlib import Path

from lib.atomic import open_no_follow, storage_error
from lib.store import LIMITS, StoreError, open_dir, open_regular, read_bytes

LOCK_FILE = ".lock"
# How long a runner waits for a lock whose recorded runner is gone: right after a kill -9 the
# children that inherited the lock are still being ended (PR_SET_PDEATHSIG) and the dead
# runner may be a zombie its parent has not collected yet.
LOCK_WAIT_SECONDS = 5.0
LOCK_RETRY_SECONDS = 0.1


class LockRefused(RuntimeError):
    """The lock cannot be taken (one-line message)."""


class LockHeld(LockRefused):
    """Another live process holds the lock (one-line message)."""


def _pid_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (exited, not yet collected by its parent) is gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (not Linux) or a race with its exit: kill(2) said it exists
    return state != "Z"


def _holder(text: str) -> tuple[int | None, str | None]:
    """(pid, host) recorded in a lock file's text; None for what is missing or unreadable."""
    fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
    try:
        pid = int(fields["pid"])
    except (KeyError, ValueError):
        pid = None
    return pid, fields.get("host") or None


def _on_another_host(host: str | None) -> bool:
    return host is not None and host != socket.gethostname()


class MatrixLock:
    """Exclusive lock of one matrix directory, held for the lifetime of a runner.

    `acquire()` returns a message when it took over a lock left by a runner that did not
    release it (None otherwise) and raises `LockHeld` when a live process holds it.
    `fileno` is the descriptor children may inherit, so the directory stays locked while any
    of them lives, even if the runner itself is gone.
    """

    def __init__(self, matrix_dir: str | os.PathLike[str]) -> None:
        self.path = Path(matrix_dir) / LOCK_FILE
        self.fd: int | None = None

    @property
    def fileno(self) -> int:
        if self.fd is None:
            raise RuntimeError(f"{self.path} is not locked")
        return self.fd

    def acquire(self) -> str | None:
        try:  # relative to the matrix directory, itself never opened through a link
            dir_fd = open_dir(self.path.parent)
        except StoreError as e:
            raise LockRefused(str(e)) from None
        except OSError as e:
            raise LockRefused(self._unusable(e)) from None
        try:
            # O_NONBLOCK: a FIFO planted at the name must not hang the runner
            flags = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK
            fd = open_no_follow(self.path.name, flags, dir_fd=dir_fd)
        except PermissionError:
            raise
        except OSError as e:
            raise LockRefused(self._unusable(e)) from None
        finally:
            os.close(dir_fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise LockRefused(
                f"{self.path} is not a regular file; the runner keeps its own lock file "
                "there: remove it"
            )
        try:
            self._wait_for(fd)
        except BaseException:
            os.close(fd)
            raise
        previous, previous_host = _holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        record = f"pid={os.getpid()} host={socket.gethostname()} since={stamp}\n".encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, record, 0)
        except OSError as e:  # a full disk before anything else was written
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise LockRefused(self._unusable(e)) from None
        self.fd = fd
        remote = _on_another_host(previous_host)
        if previous is not None and (previous != os.getpid() or remote):
            where = f" on host {previous_host}" if remote else ""
            return (
                f"taking over the lock of {self.path.parent}: its runner (pid {previous}{where}) "
                "ended without releasing it"
            )
        return None

    def _unusable(self, error: OSError) -> str:
        if error.errno == errno.ELOOP:
            return (
                f"{self.path} is a symbolic link; the runner keeps its own lock file there "
                "and never writes through a link: remove it"
            )
        if error.errno in (errno.EISDIR, errno.ENXIO, errno.ENODEV):
            return (
                f"{self.path} is not a regular file; the runner keeps its own lock file "
                "there: remove it"
            )
        environment = storage_error(error, self.path)
        if environment is not None:
            return f"{environment}; make room, then start again (nothing was started)"
        return f"{self.path} cannot be used as the matrix lock ({error.strerror or error})"

    def _wait_for(self, fd: int) -> None:
        """Take the flock; while the recorded runner is gone (or not recorded yet) wait up to
        LOCK_WAIT_SECONDS for whatever still holds it to end. A live runner: LockHeld at once."""
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                previous, host = _holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
                if _on_another_host(host):
                    # Its pid means nothing here; the flock says it (or its children) holds on.
                    raise LockHeld(
                        f"{self.path.parent} is in use by a runner on host {host} (pid "
                        f"{previous}); wait for it to end or stop it there first"
                    ) from None
                alive = previous is not None and _pid_alive(previous)
                if alive or time.monotonic() >= deadline:
                    raise LockHeld(self._held_message(previous)) from None
                time.sleep(LOCK_RETRY_SECONDS)

    def live_holder(self) -> int | None:
        """The pid of the live runner on this host that holds the lock, read from the lock
        file without taking the lock (taking it, even for a moment, could refuse a runner
        starting at that instant). None when no runner holds it, or one on another host."""
        try:
            fd = open_regular(str(self.path), None, self.path)
            text = read_bytes(fd, LIMITS[LOCK_FILE], self.path).decode("utf-8", "replace")
        except (OSError, StoreError):
            return None
        pid, host = _holder(text)
        if pid is None or host != socket.gethostname() or not _pid_alive(pid):
            return None
        return pid

    def _held_message(self, pid: int | None) -> str:
        where = self.path.parent
        if pid is None:
            return f"{where} is in use by another runner (lock {self.path}); wait for it to end"
        if _pid_alive(pid):
            return (
                f"{where} is in use by another runner (pid {pid}); wait for it to end or stop "
                f"it (kill {pid}) first"
            )
        # The runner is gone but a process that inherited its lock (a training child) lives.
        return (
            f"{where} is still locked by processes left behind by runner pid {pid} (gone); "
            f"find them with `fuser {self.path}` and stop them first"
        )

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> MatrixLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
