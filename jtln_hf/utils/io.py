"""Writing outputs so that a crash never leaves a half-written file or folder behind.

Each writer puts the new content in a temporary sibling (a hidden ``.<name>.<random>.tmp``
in the same folder, hence on the same file system) and renames it into place: readers see the
old version or the new one, never a mixture.

* :func:`atomic_write` -- a file written by a callback into a temporary file, then
  ``os.replace``-d onto the target (atomic on POSIX), with the data and then the folder entry
  flushed to disk (``fsync``), so a power cut after the call returns keeps the new file; the one
  temporary-file-and-rename of the package (:func:`atomic_write_text`, the card's figures).
* :func:`atomic_write_dir` -- a folder (a saved model with its card) written into a temporary
  folder, then swapped in with one ``renameat2(RENAME_EXCHANGE)`` on Linux (an atomic swap of
  two folders); where the system lacks it, with two renames (old -> ``.<name>.old``, new ->
  ``name``) that are undone if the second fails, and redone on the next write if the process
  died between them.
* :func:`latest_complete_checkpoint` -- the newest ``checkpoint-<step>`` folder that
  ``transformers.Trainer`` finished writing, for ``--resume_from_checkpoint``: Trainer writes
  ``trainer_state.json`` last and not atomically, so a folder without a parseable one was cut
  short (e.g. a SIGKILL while saving) and must not be resumed from.
* :func:`check_output_dir` -- the recipe's guard, before anything is written: a non-empty output
  folder holding another run is refused unless ``--overwrite_output_dir`` (then
  :func:`clear_run_outputs` removes that run's files) or ``--resume_from_checkpoint`` continues
  a run of the same settings (:data:`RUN_SETTINGS`, written by :func:`write_run_settings`) that
  has a checkpoint to resume from.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = [
    "RUN_OUTPUTS",
    "RUN_SETTINGS",
    "atomic_write",
    "atomic_write_dir",
    "atomic_write_text",
    "check_output_dir",
    "clear_run_outputs",
    "latest_complete_checkpoint",
    "resume_choice",
    "write_run_settings",
]

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
#: Files a checkpoint folder must hold, besides ``trainer_state.json``, to be resumable.
CHECKPOINT_FILES = ("model.safetensors", "config.json")


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO], None], *, mode: str = "wb", encoding: str | None = None
) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it onto ``path``.

    The one temporary-file-and-rename of the package, so every output file (results, card,
    figures) gets the same guarantees: readers see the previous content or the new one, never a
    part; if ``write`` or anything before the rename fails, ``path`` is left as it was and the
    temporary file is removed; after return, data and folder entry are on disk (``fsync``).

    Parameters
    ----------
    path : path
        The file to (re)write; its folder is created if needed.
    write : callable
        Writes the whole content into the open file it is given (e.g. ``fig.savefig(f)``).
    mode, encoding : str
        How the temporary file is opened: ``"wb"`` (default) for bytes, ``"w"`` with an
        ``encoding`` for text.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file open()'s usual mode
        with os.fdopen(fd, mode, encoding=encoding) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(text), mode="w", encoding="utf-8")


def _exchange(a: Path, b: Path) -> None:
    """Atomically swap two existing paths (Linux ``renameat2(..., RENAME_EXCHANGE)``).

    Raises ``OSError`` (``ENOSYS`` where the C library or kernel lacks it, ``EINVAL`` on file
    systems that do not support it).
    """
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name, use_errno=True) if libc_name else None
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a), None, str(b))


def _backup_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def atomic_write_dir(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)`` on a fresh temporary folder, then swap it in as ``path``.

    ``path``'s previous content stays intact if ``write`` fails (the temporary folder is
    removed).  The swap is atomic where the system offers ``renameat2(RENAME_EXCHANGE)``
    (Linux >= 3.15 on local file systems); elsewhere it is two renames, ``path`` ->
    ``.<name>.old`` and the new folder -> ``path``: if the second fails the first is undone,
    and if the process dies between the two, the next call puts the old version back before
    writing.  A folder that did not exist before is simply renamed into place.  Temporary
    folders of a process killed *during* ``write`` stay behind as hidden ``.<name>.*.tmp``
    siblings (never read; safe to delete).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _recover(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; give the folder mkdir()'s usual mode
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)
    return path


def _recover(path: Path) -> None:
    """Undo a two-rename swap that a crash interrupted: ``.<name>.old`` back to ``path``."""
    backup = _backup_path(path)
    if backup.is_dir() and not path.exists():
        os.replace(backup, path)
    elif backup.exists():
        shutil.rmtree(backup, ignore_errors=True)


def _swap_in(tmp: Path, path: Path) -> None:
    """Make ``tmp`` become ``path``; on return ``tmp`` holds the old version (or is gone)."""
    if not path.exists():
        os.replace(tmp, path)
        return
    try:
        _exchange(tmp, path)
    except OSError as err:
        if err.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    else:
        shutil.rmtree(tmp, ignore_errors=True)  # now the old version
        return
    backup = _backup_path(path)
    os.replace(path, backup)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(backup, path)  # put the previous version back
        raise
    shutil.rmtree(backup, ignore_errors=True)


def latest_complete_checkpoint(folder: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-<step>`` folder in ``folder`` that Trainer finished writing.

    Complete means: ``trainer_state.json`` parses as JSON and records ``global_step == step``
    (Trainer writes it last), and the weights (``model.safetensors``) and ``config.json``
    exist.  Newer folders that fail this (a save cut short by a crash or a SIGKILL) are
    skipped.  Unlike ``transformers.trainer_utils.get_last_checkpoint``, which returns the
    highest-numbered folder whatever its state, this never resumes from half a checkpoint
    (which would fail to load, or silently restart from step 0 when only the state file is
    missing).

    Returns
    -------
    str or None
        The folder's path, or ``None`` when ``folder`` does not exist or holds no complete
        checkpoint.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    candidates = []
    for child in folder.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and child.is_dir():
            candidates.append((int(match.group(1)), child))
    for step, child in sorted(candidates, reverse=True):
        if _is_complete(child, step):
            return str(child)
    return None


def _is_complete(checkpoint: Path, step: int) -> bool:
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(state, dict) or state.get("global_step") != step:
        return False
    return all((checkpoint / name).is_file() for name in CHECKPOINT_FILES)


# ------------------------------------------------------------------------------- the output folder
#: The record of a run's settings (:func:`jtln_hf.experiment.arguments.run_settings`), written into its
#: output folder before the first step; a resumed run must have the same.
RUN_SETTINGS = "settings.json"
#: What a run of the recipe writes into its output folder: all that ``--overwrite_output_dir`` removes.
RUN_OUTPUTS = ("results.md", "results.json", RUN_SETTINGS, "runs", "model", "bad_images.json")


def resume_choice(value: str | bool | None) -> str | None:
    """``--resume_from_checkpoint``: ``"latest"`` (``true``/``last``/``latest``), a checkpoint path, or None."""
    if value is True or (isinstance(value, str) and value.lower() in ("true", "last", "latest")):
        return "latest"
    if value is None or value is False or (isinstance(value, str) and value.lower() in ("false", "none", "")):
        return None
    return str(value)


def _read_settings(folder: Path) -> dict | None:
    try:
        recorded = json.loads((folder / RUN_SETTINGS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def _first_difference(recorded: dict, settings: dict) -> str:
    key = next(k for k in sorted(set(recorded) | set(settings)) if recorded.get(k, "unset") != settings.get(k, "unset"))
    return f"--{key} was {recorded.get(key, 'unset')!r}, now {settings.get(key, 'unset')!r}"


def check_output_dir(output_dir: str | os.PathLike, settings: dict, *, overwrite: bool = False,
                     resume: str | bool | None = None, added: dict | None = None) -> None:  # fmt: skip
    """Refuse a run that would overwrite or mix with another run's outputs; reads, never writes.

    A run may write into ``output_dir`` when it is missing or empty, when ``overwrite`` is set
    (``--overwrite_output_dir``), or when ``resume`` (``--resume_from_checkpoint``) continues the
    run that is there: its recorded settings (:data:`RUN_SETTINGS`; a folder without the record is
    taken as is) equal ``settings``, and a stage has a complete checkpoint to resume from (or
    ``resume`` is the path of one). ``added``: settings that runs recorded before they existed ran with the
    given value (a record without the key is read as having it).

    Raises
    ------
    ValueError
        One line naming the problem and the fix.
    """
    out = Path(output_dir)
    choice = resume_choice(resume)
    if overwrite and choice is not None:
        raise ValueError("--overwrite_output_dir deletes the checkpoints that --resume_from_checkpoint continues "
                         "from: pass one of them.")  # fmt: skip
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output_dir {out} is a file: name a folder.")
    if choice is not None:
        recorded = _read_settings(out)
        if recorded is not None:
            recorded = {**{k: v for k, v in (added or {}).items() if k in settings}, **recorded}
        if recorded is not None and recorded != settings:
            raise ValueError(f"--resume_from_checkpoint: {out} holds a run with other settings "
                             f"({_first_difference(recorded, settings)}): resume it with the flags that started it, "
                             "or train into another --output_dir.")  # fmt: skip
        if choice != "latest":
            if not Path(choice).is_dir():
                raise ValueError(f"--resume_from_checkpoint {choice}: no such checkpoint folder; pass true to resume "
                                 f"from the newest complete checkpoint in {out / 'runs'}.")  # fmt: skip
            return
        stages = sorted(p for p in (out / "runs").iterdir() if p.is_dir()) if (out / "runs").is_dir() else []
        if not any(latest_complete_checkpoint(stage) for stage in stages):
            raise ValueError(f"--resume_from_checkpoint: {out} holds no complete checkpoint to resume from "
                             "(runs/<stage>/checkpoint-<step>); a run saves checkpoints only with --save_strategy "
                             "steps --save_steps N (the recipe's default is no); drop --resume_from_checkpoint to "
                             "train from the start.")  # fmt: skip
        return
    if overwrite or not out.is_dir():
        return
    held = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
    if held:
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise ValueError(f"--output_dir {out} is not empty ({shown}): pass --overwrite_output_dir to replace that "
                         "run, --resume_from_checkpoint true to continue it with the same flags, or another "
                         "--output_dir.")  # fmt: skip


def clear_run_outputs(output_dir: str | os.PathLike) -> None:
    """Remove what a previous run wrote into ``output_dir`` (:data:`RUN_OUTPUTS`), nothing else."""
    out = Path(output_dir)
    for name in RUN_OUTPUTS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def write_run_settings(output_dir: str | os.PathLike, settings: dict) -> Path:
    """Record ``settings`` in ``output_dir``/:data:`RUN_SETTINGS` (atomically), creating the folder."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    return atomic_write_text(Path(output_dir) / RUN_SETTINGS, json.dumps(settings, indent=2, sort_keys=True) + "\n")
