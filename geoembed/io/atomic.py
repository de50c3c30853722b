"""Atomic file writes: write to a temporary sibling, fsync, then rename over the target.

Temporary names are ``.NAME.PID.RANDOM[SUFFIX].tmp`` beside the target (``PID``: the writing process).
A killed writer leaves its temporary behind; the next write of the same target removes every
temporary of that target whose process is gone (:func:`remove_stale_temps`), and so does
:func:`check_output` before a stage starts. :func:`check_output` also refuses, before any work, an
output that is a folder where a file is expected, or in a folder that does not exist or cannot be written.

(Fingerprints of files and objects are in :mod:`geoembed.io.fingerprint`.)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from geoembed.errors import InputError

__all__ = ["atomic_path", "atomic_write_json", "atomic_write_text", "check_output", "pid_alive",
           "remove_stale_temps", "stale_temps"]

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]{6,}.*\.tmp$")
_OLD = re.compile(r"^\.(?P<name>.+)\.old-(?P<pid>\d+)$")
_LEGACY = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}.*\.tmp$")  # before the pid was in the name


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "", clean: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is renamed onto ``target``.

    On any exception the temporary file (or folder) is removed and ``target`` is left untouched,
    so a failed or killed write never leaves something that looks complete. With ``clean``, temporaries
    of an earlier killed write of the same target are removed first (one listing of the folder: pass
    ``clean=False`` for many small writes into one large folder, and sweep it once instead).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if clean:
        remove_stale_temps(target.parent, target.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=suffix + ".tmp",
                               dir=target.parent)
    os.close(fd)
    os.unlink(tmp)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_dir():
            # Move the old folder aside first, so that a kill at any moment leaves either the old
            # or the new folder under ``target`` (or the old one beside it), never neither.
            old = None
            if target.exists():
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                if old.exists():
                    shutil.rmtree(old)
                os.replace(target, old)
            os.replace(tmp_path, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        else:
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp_path, target)
    except BaseException:
        if tmp_path.is_dir():
            shutil.rmtree(tmp_path, ignore_errors=True)
        elif tmp_path.exists():
            tmp_path.unlink()
        raise


def atomic_write_text(target: str | os.PathLike, text: str, clean: bool = True) -> Path:
    """Write ``text`` to ``target`` atomically (``clean``: see :func:`atomic_path`)."""
    with atomic_path(target, clean=clean) as tmp:
        tmp.write_text(text)
    return Path(target)


def atomic_write_json(target: str | os.PathLike, obj, clean: bool = True) -> Path:
    """Write ``obj`` as indented JSON to ``target`` atomically (``clean``: see :func:`atomic_path`)."""
    return atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", clean)


# ----------------------------------------------------------------------------------- leftovers of kills

def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a zombie, killed but not yet reaped, does not)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def stale_temps(folder: str | os.PathLike, name: str | None = None, *, any_pid: bool = False) -> list[Path]:
    """Temporaries left in ``folder`` by killed :func:`atomic_path` writes (of target ``name`` only when
    given): temporary files or folders and the ``.NAME.old-PID`` folders of a replace, whose process is
    no longer alive (``any_pid``: whatever their process; for a folder that only this run writes)."""
    folder = Path(folder)
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for p in entries:
        m = _TEMP.match(p.name) or _OLD.match(p.name)
        if m is not None:
            if name is not None and m["name"] != name:
                continue
            if not any_pid and pid_alive(int(m["pid"])):
                continue
            if _OLD.match(p.name) and not (folder / m["name"]).exists():
                continue  # the only copy of an earlier output whose replacement was killed: keep it
            out.append(p)
        elif (m := _LEGACY.match(p.name)) is not None and (name is None or m["name"] == name):
            out.append(p)
    return out


def remove_stale_temps(folder: str | os.PathLike, name: str | None = None, *, any_pid: bool = False) -> int:
    """Remove :func:`stale_temps` of ``folder``; returns how many were removed."""
    n = 0
    for p in stale_temps(folder, name, any_pid=any_pid):
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            n += 1
        except FileNotFoundError:  # removed by a concurrent run meanwhile
            pass
    return n


def check_output(path: str | os.PathLike, *, what: str = "output", folder: bool = False) -> Path:
    """Refuse, before any work, an output that cannot be written; remove its stale temporaries.

    ``folder=False``: ``path`` must not be a folder. ``folder=True``: ``path`` must not be a file. Either
    way its parent folder must exist and be writable. Raises InputError naming the path.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not folder and path.is_dir():
        raise InputError(f"{what} {path} is a folder; give a file name (e.g. {path / 'out.parquet'})")
    if folder and path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} exists and is not a folder")
    if not parent.exists():
        raise InputError(f"{what} {path}: folder {parent} does not exist; create it first")
    if not parent.is_dir():
        raise InputError(f"{what} {path}: {parent} is not a folder")
    if not _writable(parent):
        raise InputError(f"{what} {path}: folder {parent} is not writable")
    remove_stale_temps(parent, path.name)
    return path


def _writable(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (tried for real: permissions alone do not tell a
    read-only file system, nor anything to root)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        fd, probe = tempfile.mkstemp(prefix=f".geoembed-probe.{os.getpid()}.", suffix=".tmp", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True
