"""A run directory: every stage reads its inputs from and writes its artifacts to it (markers: pipeline/graph.py)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from thinkrec.errors import BusyError, StorageError

#: errno values that mean "this directory cannot take more writes" rather than a bug
STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


class RunDirBusy(BusyError):
    """Another process holds the run directory's lock."""


@contextlib.contextmanager
def storage_errors(root: Path) -> Iterator[None]:
    """A write that fails for lack of space or permission becomes one clear :class:`StorageError` (instead of a
    traceback from deep in a writer); other errors pass unchanged."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS or isinstance(exc, StorageError):
            raise
        raise StorageError(f"{exc.filename or root}: cannot write ({exc.strerror or exc}); artifacts written before "
                           "are intact (every write is atomic) — free space or fix permissions and rerun: finished "
                           "stages are reused") from exc


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        with storage_errors(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
        self.logger = logging.getLogger(f"thinkrec.run.{self.root.resolve()}")  # one logger per folder, not per name
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        log_file = str(self.root / "log.txt")
        if not any(getattr(h, "baseFilename", None) == str(Path(log_file).resolve()) for h in self.logger.handlers):
            handler = logging.FileHandler(log_file)
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            self.logger.addHandler(handler)

    def path(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def stage_dir(self, stage: str) -> Path:
        d = self.root / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def log(self, msg: str) -> None:
        self.logger.info(msg)

    @contextlib.contextmanager
    def lock(self, wait: float = 0.0) -> Iterator[None]:
        """Hold the run directory for this process: a second ``thinkrec run`` on it waits up to ``wait`` seconds,
        then fails naming the holder. The kernel drops the lock when its holder dies (even by SIGKILL), so a killed
        run never leaves the directory locked."""
        with storage_errors(self.root):
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:  # held by another process
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                        raise RunDirBusy(f"{self.root}: run directory in use by {holder}; wait for it to finish "
                                         "(thinkrec run --wait S) or use another run name (--name)") from None
                    time.sleep(0.2)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock
