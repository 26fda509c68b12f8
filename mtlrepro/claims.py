"""Job claims: lock files that let several sweeps share one store without running a job twice.

A job is claimed by creating ``<record>.lock`` next to its record
(``results/runs/<profile>/<fp16>/<kind>/seed<k>.json.lock``) with ``os.open(O_CREAT | O_EXCL)``,
which is atomic on a local disk and on NFS (v3 and later): of two sweeps that try at once,
exactly one creates the file. The file holds its owner (JSON): host, pid, the pid's start time,
the machine's boot id and pid namespace, the Slurm job id when there is one, start time, job
name and a random token (ownership for :meth:`Claim.release`).

A claim is *stale*, and may be taken over, when

* its owner ran on this machine (same host, boot id and pid namespace) and its pid is dead, or
  alive but started at another time (the pid was reused);
* its host is this host but the boot id differs (the machine rebooted since);
* it names this Slurm job id and an earlier ``SLURM_RESTART_COUNT`` (a requeued job takes its own
  claim back; processes of one allocation share the job id and are told apart by the rules above);
* its file is older than ``max_age`` (default 24 h, ``MTLREPRO_CLAIM_MAX_AGE`` in seconds): the
  only rule for an owner on another host. A running job refreshes the file's mtime through
  :func:`heartbeat` (the trainer calls it once per epoch), so with the hook in place the age may
  be set to a few epochs' time; without it the age must exceed the longest run.

Taking over is itself guarded (``<lock>.break``, created with ``O_EXCL``; the lock's inode and
mtime must still be those judged stale), so two sweeps that both find a stale claim do not both
win. A claim is released (its file removed) when the job ends, finished or failed; the file of a
killed job stays and is stale by the pid rule.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["Claim", "Owner", "claim", "peek", "heartbeat", "lock_path", "live", "release_dead", "remove_stale",
           "DEFAULT_MAX_AGE"]

DEFAULT_MAX_AGE = 24 * 3600.0     # seconds: longer than any run that does not call heartbeat()
BREAK_MAX_AGE = 60.0              # a take-over takes milliseconds; a guard older than this is left over
_HELD: dict[Path, "Claim"] = {}   # this process's claims, for heartbeat()


def lock_path(record: Path) -> Path:
    return record.with_name(record.name + ".lock")


def max_age() -> float:
    value = os.environ.get("MTLREPRO_CLAIM_MAX_AGE")
    return float(value) if value else DEFAULT_MAX_AGE


def _read_first(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _pid_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22; "" off Linux)."""
    stat = _read_first(f"/proc/{pid}/stat")
    if not stat:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()   # the command name (field 2) may hold spaces
    return fields[19] if len(fields) > 19 else ""


def _pidns() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # someone else's process: alive
        return True
    return True


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    started: float
    job: str = ""
    token: str = ""
    pid_start: str = ""
    boot_id: str = ""
    pidns: str = ""
    slurm_job: str = ""
    slurm_restart: int = 0

    @classmethod
    def me(cls, job: str = "", pid: int | None = None) -> "Owner":
        pid = os.getpid() if pid is None else pid
        return cls(host=socket.gethostname(), pid=pid, started=time.time(), job=job, token=secrets.token_hex(8),
                   pid_start=_pid_start(pid), boot_id=_read_first("/proc/sys/kernel/random/boot_id"),
                   pidns=_pidns(), slurm_job=os.environ.get("SLURM_JOB_ID", ""),
                   slurm_restart=int(os.environ.get("SLURM_RESTART_COUNT") or 0))

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.started))
        return f"host {self.host} pid {self.pid} since {since}"


def read_owner(lock: Path) -> Owner | None:
    """The claim's owner; None when the file is empty or not a claim (being written, or broken)."""
    try:
        raw = json.loads(lock.read_text())
        return Owner(**{k: raw[k] for k in Owner.__dataclass_fields__ if k in raw})
    except (OSError, ValueError, TypeError, KeyError):
        return None


def stale_reason(owner: Owner | None, age: float, limit: float | None = None) -> str | None:
    """Why a claim of ``owner`` whose file is ``age`` seconds old is stale, or None (live)."""
    limit = max_age() if limit is None else limit
    if age > limit:
        return f"not refreshed for {age / 3600:.1f} h (limit {limit / 3600:.1f} h)"
    if owner is None:   # created, not yet written: live unless left so for long
        return "an unreadable claim file" if age > BREAK_MAX_AGE else None
    me = Owner.me()
    if owner.slurm_job and owner.slurm_job == me.slurm_job and owner.slurm_restart < me.slurm_restart:
        return f"an earlier attempt of this Slurm job {owner.slurm_job} (requeued)"
    if owner.host != me.host:
        return None                     # another machine: only the age tells
    if owner.boot_id and me.boot_id and owner.boot_id != me.boot_id:
        return "its host rebooted since"
    if owner.pidns and me.pidns and owner.pidns != me.pidns:
        return None                     # another container on this host: its pids are not ours
    if not pid_alive(owner.pid):
        return f"pid {owner.pid} is dead"
    if owner.pid_start and _pid_start(owner.pid) not in ("", owner.pid_start):
        return f"pid {owner.pid} is another process now"
    return None


class Claim:
    """A held claim; a context manager that releases it."""

    def __init__(self, lock: Path, owner: Owner, took_over: str = ""):
        self.lock, self.owner, self.took_over = lock, owner, took_over
        _HELD[lock] = self

    def touch(self) -> None:
        try:
            os.utime(self.lock)
        except OSError:
            pass

    def release(self) -> None:
        """Remove the lock if it is still ours (a claim judged stale may have been taken over)."""
        _HELD.pop(self.lock, None)
        now = read_owner(self.lock)
        if now is not None and now.token != self.owner.token:
            print(f"mtlrepro: the claim {self.lock} was taken over by {now.describe()} while this job ran "
                  f"(raise MTLREPRO_CLAIM_MAX_AGE?)", file=sys.stderr)
            return
        try:
            self.lock.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _create(lock: Path, owner: Owner) -> bool:
    from .train.faults import EnvironmentFault
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError as e:
        raise EnvironmentFault(f"cannot create the job claim {lock} ({e.strerror or e}): make the results "
                               "folder writable or set MTLREPRO_RESULTS to another folder", lock) from None
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(owner), f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        lock.unlink(missing_ok=True)
        raise EnvironmentFault(f"cannot write the job claim {lock} ({e.strerror or e}): is the disk full?",
                               lock) from None
    return True


def _break(lock: Path, seen: tuple[int, int]) -> bool:
    """Remove the stale ``lock`` if it is still the file judged stale (inode, mtime ``seen``)."""
    guard = lock.with_name(lock.name + ".break")
    try:
        os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        try:
            if time.time() - guard.stat().st_mtime > BREAK_MAX_AGE:
                guard.unlink()          # left by a sweep killed during a take-over
        except OSError:
            pass
        return False
    try:
        st = os.stat(lock)
        if (st.st_ino, st.st_mtime_ns) != seen:
            return False                # re-taken or refreshed meanwhile
        lock.unlink()
        return True
    except FileNotFoundError:
        return True
    finally:
        guard.unlink(missing_ok=True)


def peek(record: Path, limit: float | None = None) -> tuple[Owner | None, str | None, tuple[int, int]] | None:
    """(owner, why stale or None, (inode, mtime)) of the claim on ``record``; None when unclaimed."""
    lock = lock_path(record)
    try:
        st = os.stat(lock)
    except FileNotFoundError:
        return None
    owner = read_owner(lock)
    return owner, stale_reason(owner, time.time() - st.st_mtime, limit), (st.st_ino, st.st_mtime_ns)


def claim(record: Path, job: str = "", limit: float | None = None) -> Claim | Owner | None:
    """Claim the job whose record is ``record``: a :class:`Claim` (hold it while the job runs), or
    the live :class:`Owner` that holds it (None when that owner's file is not readable yet)."""
    lock = lock_path(record)
    for _ in range(3):
        me = Owner.me(job)
        if _create(lock, me):
            return Claim(lock, me)
        seen = peek(record, limit)
        if seen is None:
            continue                    # released meanwhile: try again
        owner, why, stamp = seen
        if why is None:
            return owner
        if _break(lock, stamp) and _create(lock, me):
            prev = owner.describe() if owner else "an unknown owner"
            print(f"mtlrepro: took over the stale claim of {job or record} ({prev}: {why})", file=sys.stderr)
            return Claim(lock, me, took_over=why)
    seen = peek(record, limit)
    return seen[0] if seen else None


def release_dead(record: Path, pid: int) -> bool:
    """Remove the claim on ``record`` left by this host's process ``pid`` after it died (the
    local-multi launcher, for a worker that crashed or was killed). True when one was removed."""
    lock = lock_path(record)
    owner = read_owner(lock)
    if owner is None or owner.pid != pid or owner.host != socket.gethostname() or pid_alive(pid):
        return False
    lock.unlink(missing_ok=True)
    return True


def remove_stale(root: Path, limit: float | None = None) -> list[tuple[Path, str]]:
    """Remove every stale claim under ``root/runs`` (the rules above; through the same guarded
    take-over as :func:`claim`), so that a killed sweep's locks do not linger until the job is claimed
    again and the store shows only live claims. Returns (lock, why stale) per removed file."""
    removed = []
    base = Path(root) / "runs"
    for lock in sorted(base.rglob("*.json.lock")) if base.is_dir() else []:
        seen = peek(lock.with_name(lock.name[:-len(".lock")]), limit)
        if seen is None or seen[1] is None:
            continue
        if _break(lock, seen[2]):
            removed.append((lock, seen[1]))
    if removed:
        lock, why = removed[0]
        print(f"mtlrepro: removed {len(removed)} stale job claim(s) left by killed sweeps under {base} "
              f"(e.g. {lock.relative_to(base)}: {why})", file=sys.stderr)
    return removed


def live(record: Path, limit: float | None = None) -> "Owner | None":
    """The owner of a live claim on ``record`` (a job another sweep is running now), else None."""
    seen = peek(record, limit)
    return seen[0] if seen is not None and seen[1] is None else None


def heartbeat() -> None:
    """Refresh the mtime of every claim this process holds (a running job's "still alive")."""
    for held in list(_HELD.values()):
        held.touch()
