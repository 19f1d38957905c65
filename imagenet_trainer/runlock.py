"""One run per folder: a lock file naming its holder (host, pid, start time, SLURM job), held with flock for the
holder's lifetime.

flock is released by the kernel when its process dies, SIGKILL included, so on this host a lock nobody holds is
stale whatever its file says, and is taken over. The record in the file says who holds it, for the message a second
launch gets. A record of another host that is still marked held is not taken over: flock is only as coherent across
hosts as the filesystem makes it (NFSv4 and GPFS are; Lustre mounted with localflock is not), so this host cannot
tell a crashed holder from a live one; the message says how to clear it. The same SLURM job (a requeue, which may
land on other nodes) takes over its own lock.

A lock file deleted by hand while its run goes on locks nothing: the next launch makes a new one and takes the
folder. ``check`` (train.py calls it before each checkpoint and export) finds that out: a file that is gone is made
and locked again (no launch can have taken the folder through a file that was not there), one that another launch
made since ends the check in a ValueError naming its holder.
"""
from __future__ import annotations

import atexit
import errno
import fcntl
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = "run.lock"
_HELD: dict[Path, "FolderLock"] = {}  # this process's locks, by file
RECORD_START = b'{"host"'  # every record begins so: acquire writes the host first, release keeps the order
LINGER_SECONDS = 15  # s to retry while the record says its holder is gone but the flock is still held


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host: not gone, not a zombie, not dying of a SIGKILL already sent."""
    if pid <= 0:  # no record
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":" in line)
    except OSError:  # no /proc (not Linux), or it has just gone
        return True
    pending = int(status.get("SigPnd", "0").strip() or "0", 16) | int(status.get("ShdPnd", "0").strip() or "0", 16)
    return status.get("State", "").strip()[:1] not in ("Z", "X") and not pending & (1 << (signal.SIGKILL - 1))


def _holder(record: dict) -> str:
    job = f", SLURM job {record['slurm_job_id']}" if record.get("slurm_job_id") else ""
    return f"pid {record.get('pid')} on host {record.get('host')} since {record.get('start')}{job}"


class FolderLock:
    """``acquire`` takes ``folder``/LOCK_FILE or raises ValueError (one line naming the holder); the lock lasts
    until ``release`` or the process's end."""

    def __init__(self, folder: Path, flag: str, path: Path | None = None):
        """``path``: the lock file, when not ``folder``/LOCK_FILE (preprocess.py's OUT appears by a rename, so its
        lock sits beside it, and goes at release: a launch that opened it in that instant is the only loser)."""
        self.folder, self.flag, self.fd, self.beside = Path(folder), flag, None, path is not None
        self.path = Path(path) if path is not None else self.folder / LOCK_FILE
        self.took_over: str | None = None  # the stale holder this launch replaced, for the log
        self.created = False  # whether acquire made the folder

    def acquire(self) -> FolderLock:
        if (mine := _HELD.pop(self.path, None)) is not None:  # this process runs its job again (a caller's loop)
            mine.release()
        self.created = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        if self.beside and not self._is_record(fd):  # beside the folder, in one of the user's: maybe their file
            os.close(fd)
            raise ValueError(f"{self.flag} {self.folder}: {self.path} is not a lock record of a run (a file of "
                             f"yours?), and the run's lock would overwrite it: move it away or give another "
                             f"{self.flag}")
        flocked = self._flock(fd)
        record = self._read(fd)
        if flocked is None:
            os.close(fd)
            ended = " (it has ended; processes it started still hold the lock)" if not _pid_alive(
                int(record.get("pid", 0))) and record.get("host") == socket.gethostname() else ""
            raise ValueError(f"{self.flag} {self.folder} is in use by {_holder(record)}{ended}; wait for it to end "
                             f"or give another {self.flag}")
        try:
            self._judge(record, flocked)
        except ValueError:
            os.close(fd)
            raise
        self.fd = fd
        _HELD[self.path] = self
        os.register_at_fork(after_in_child=self._forget)  # DataLoader workers must not keep the lock alive
        self._write({"host": socket.gethostname(), "pid": os.getpid(),
                     "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "command": sys.argv, "held": True})
        atexit.register(self.release)
        return self

    def check(self) -> str | None:
        """Whether the file at ``path`` is still the one this lock holds: None when it is; when it was deleted, it is
        made and locked again, with this holder's record, and a line saying so is returned; ValueError (naming who
        holds the file there now) when another launch made one since. OSError when the new file cannot be written."""
        if self._there():
            return None
        fd = None
        if not os.path.lexists(self.path):
            try:  # exclusive: a launch that makes the file in this instant gets it, and this run stops below
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                pass
        if fd is not None and self._flock_now(fd):
            record, old = self._read(self.fd), self.fd
            self.fd = fd
            os.close(old)  # the deleted file's flock goes with it
            self._write({**record, "held": True})
            return (f"{self.path} was deleted while this run held it: made and locked again (no other launch had "
                    f"taken {self.folder})")
        if fd is not None:
            os.close(fd)
        try:
            with open(self.path, "rb") as f:
                record = self._read(f.fileno())
        except OSError:
            record = {}
        now = f"the lock of {_holder(record)}" if record.get("pid") else "a file that names no run"
        raise ValueError(f"{self.path} was deleted while this run held it, and is now {now}")

    @staticmethod
    def _flock_now(fd: int) -> bool:
        """flock without waiting: False when another process holds it; True when taken, or when the filesystem has
        no flock (the record alone decides, as in acquire)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            return e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN)
        return True

    @staticmethod
    def _flock(fd: int) -> bool | None:
        """True: locked; False: the filesystem has no flock (the record alone decides); None: another holds it.
        Retried for LINGER_SECONDS while the record says its holder is gone: ``in_use`` (in another launch, or a
        process a dead holder forked before taking the lock) may hold it for a moment."""
        deadline = time.monotonic() + LINGER_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return False
            record = FolderLock._read(fd)
            gone = not record.get("held") or (record.get("host") == socket.gethostname()
                                               and not _pid_alive(int(record.get("pid", 0))))
            if time.monotonic() > deadline or not gone:
                return None
            time.sleep(0.5)

    def _judge(self, record: dict, flocked: bool) -> None:
        """Refuse (ValueError) unless ``record``'s holder is gone; note a takeover."""
        if not record.get("held") or record.get("pid") == os.getpid():
            return
        this_host = record.get("host") == socket.gethostname()
        same_job = record.get("slurm_job_id") and record.get("slurm_job_id") == os.environ.get("SLURM_JOB_ID")
        if this_host and not flocked and _pid_alive(int(record.get("pid", 0))):
            raise ValueError(f"{self.flag} {self.folder} is in use by {_holder(record)}; wait for it to end or give "
                             f"another {self.flag}")
        if not this_host and not same_job:
            raise ValueError(f"{self.flag} {self.folder} is locked by {_holder(record)}, another host: from here "
                             f"it cannot be told whether that run still lives. If it has ended (its host crashed "
                             f"or was reclaimed), delete {self.path} and launch again")
        self.took_over = f"took over {self.path} from {_holder(record)}, which has ended"

    @staticmethod
    def _is_record(fd: int) -> bool:
        """Whether the file is a record of a run, whole or damaged: empty (just created), cut short (its writer
        died while writing) or NUL bytes (a host crash before the record reached the disk) all are; a user's file
        does not begin as every record _write makes does."""
        data = os.pread(fd, 1 << 16, 0).strip(b"\0")
        return data.startswith(RECORD_START) or RECORD_START.startswith(data)

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            record = json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
        except ValueError:  # an empty or half-written record: its writer died while writing
            return {}
        return record if isinstance(record, dict) else {}

    def _write(self, record: dict) -> None:
        """The record, whole: a short pwrite (a file size limit, a signal, a filesystem's own limit) is continued
        where it stopped; a write that takes no byte raises."""
        data = (json.dumps(record) + "\n").encode()
        os.ftruncate(self.fd, 0)
        done = 0
        while done < len(data):  # past a limit the next call raises (EFBIG, ENOSPC) rather than writing nothing
            written = os.pwrite(self.fd, data[done:], done)
            if written <= 0:
                raise OSError(errno.EIO, f"{self.path}: wrote {done} of the record's {len(data)} bytes")
            done += written
        os.fsync(self.fd)

    def _there(self) -> bool:
        """Whether the file at ``path`` is the one this lock holds (not one another launch made after a delete)."""
        try:
            there, mine = os.stat(self.path), os.fstat(self.fd)
        except OSError:
            return False
        return (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino)

    def _forget(self) -> None:
        """In a forked child: close its copy of the descriptor, so the lock ends with the holder, not its children;
        the holder's own copy keeps it."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def release(self) -> None:
        """Mark the record released and drop the flock. A lock file in its folder stays (unlinking it would let a
        launch that opened it lock a file no one else sees), one beside its folder goes; a folder this lock created
        and nothing else wrote into (a start that failed) goes, so that the failure leaves nothing behind."""
        if self.fd is None:
            return
        try:
            record = self._read(self.fd)
            self._write({**record, "held": False, "end": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            if (self.beside or (self.created and os.listdir(self.path.parent) == [self.path.name])) and self._there():
                self.path.unlink()
            if self.created and not os.listdir(self.path.parent):
                self.path.parent.rmdir()
        except OSError:
            pass
        finally:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None


def in_use(folder: Path) -> str | None:
    """Who holds ``folder``'s lock now (a live holder on any host whose filesystem has coherent flock), or None;
    takes nothing."""
    path = Path(folder) / LOCK_FILE
    try:  # for writing, though nothing is written: NFS emulates flock with fcntl locks, whose exclusive kind fails
        fd = os.open(path, os.O_RDWR)  # on a read-only descriptor (EBADF, read as "no flock": free)
    except PermissionError:  # another user's lock file
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
    except OSError:
        return None
    try:  # a holder killed a moment ago (its record says it is gone) is waited for, as acquire does
        return _holder(FolderLock._read(fd)) if FolderLock._flock(fd) is None else None
    finally:
        os.close(fd)  # and with it a lock taken just now


def held(folder: Path) -> FolderLock | None:
    """This process's lock of ``folder`` (its LOCK_FILE) while it holds it, or None."""
    lock = _HELD.get(Path(folder) / LOCK_FILE)
    return lock if lock is not None and lock.fd is not None else None


def release_all() -> None:
    """Release this process's locks (a script's main() returning to a caller that goes on)."""
    for lock in list(_HELD.values()):
        _HELD.pop(lock.path, None)
        lock.release()
