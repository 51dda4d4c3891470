"""Sharing a trained JTLN model: the Hub-ready folder, and pushing it with clear errors.

A Hub-ready folder holds everything a user needs, with or without jtln_hf installed:

* ``model.safetensors`` and ``config.json`` (with ``auto_map``), plus ``configuration_jtln.py`` and
  ``modeling_jtln.py`` (``JointImageClassifier.save_pretrained``, remote code);
* ``preprocessor_config.json`` (with ``auto_map``) and ``image_processing_jtln.py``
  (``JointImageClassifierImageProcessor.save_pretrained``);
* ``README.md``, the model card, and its figures (``*.png``, :mod:`jtln_hf.sharing.modelcard`).

:func:`push_model_folder` uploads such a folder (``HfApi.create_repo`` then
``HfApi.upload_folder``, which leaves out hidden files and ``__pycache__``:
:data:`PUSH_IGNORE_PATTERNS`) and turns the ways it can fail (an invalid repository id, no token,
a rejected token, no write access, no network, offline mode) into a :class:`HubPushError` that
names the problem and the fix. It only reads the folder, so a failed push leaves the local output
as it was.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import CommitInfo, HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalTokenNotFoundError, OfflineModeIsEnabled
from huggingface_hub.utils import filter_repo_objects, validate_repo_id

from ..image_processing_jtln import JointImageClassifierImageProcessor
from ..version import __version__


class HubPushError(RuntimeError):
    """A push to the Hugging Face Hub failed; the message says why and what to do."""


def save_model_folder(model, folder: str | os.PathLike) -> Path:
    """Save ``model`` (a `JointImageClassifier`) and its image processor into ``folder``, with their code.

    The card is written separately (:func:`jtln_hf.sharing.modelcard.write_model_card`).
    """
    folder = Path(folder)
    model.save_pretrained(folder)
    JointImageClassifierImageProcessor.from_model_config(model.config).save_pretrained(folder)
    return folder


#: What a push leaves out (``HfApi.upload_folder``'s ``ignore_patterns``, matched against paths
#: relative to the folder): hidden files and folders (e.g. a crashed write's ``.<name>.*.tmp``)
#: and ``__pycache__`` folders (``upload_folder`` itself always leaves out ``.git``).
PUSH_IGNORE_PATTERNS = (".*", "*/.*", "__pycache__/", "*/__pycache__/")


def _push_error(repo_id: str, problem: str, folder: Path | None = None, exclude=()) -> HubPushError:
    """``cannot push to R: <problem and fix>``, and after a failed push the ``hf upload`` line that pushes
    ``folder`` later, leaving out what this push left out."""
    later = ""
    if folder is not None:
        patterns = " ".join(f"--exclude '{p}'" for p in (".*", *exclude))
        later = f"; the trained model is intact in {folder}: push it later with `hf upload {repo_id} {folder} . {patterns}`"
    return HubPushError(f"cannot push to {repo_id}: {problem}{later}.")


def _invalid_repo_id(err: HFValidationError) -> str:
    return (
        f"not a valid repository id ({str(err).splitlines()[0].rstrip('.')}): pass --hub_model_id user/name or "
        "org/name (letters, digits, '-', '_', '.'; at most 96 characters)"
    )


def check_can_push(repo_id: str, token: str | None = None) -> None:
    """Fail early (before training) when a push to ``repo_id`` cannot work.

    Raises
    ------
    HubPushError
        ``repo_id`` is not a valid repository id (``huggingface_hub.utils.validate_repo_id``),
        ``HF_HUB_OFFLINE=1`` is set (huggingface_hub would refuse the push), or no Hugging Face
        token is available.
    """
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise _push_error(repo_id, _invalid_repo_id(err)) from err
    if constants.HF_HUB_OFFLINE:  # read at call time: what HfApi itself honours
        raise _push_error(repo_id, "HF_HUB_OFFLINE=1 is set: `unset HF_HUB_OFFLINE` to train and push, or drop "
                          "--push_to_hub and push OUTPUT_DIR/model later with `hf upload`")  # fmt: skip
    if token or get_token():
        return
    raise _push_error(repo_id, "no Hugging Face token found: log in with `hf auth login` (a token with write access, "
                      "from https://huggingface.co/settings/tokens), set HF_TOKEN or pass --hub_token")  # fmt: skip


def push_model_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload JTLN model (jtln_hf)",
    exclude: tuple[str, ...] | list[str] = (),
    repo_type: str | None = None,
    space_sdk: str | None = None,
) -> CommitInfo:
    """Create ``repo_id`` if needed and upload ``folder`` to it with ``HfApi.upload_folder``.

    Every file is uploaded except hidden ones and ``__pycache__`` (:data:`PUSH_IGNORE_PATTERNS`);
    a model folder is one commit (``upload_folder`` splits only very large folders).

    Parameters
    ----------
    folder : path
        A Hub-ready folder (see :func:`save_model_folder`); it is only read.
    repo_id : str
        ``user/name`` or ``org/name`` (a bare ``name`` goes to the token's user).
    token : str, optional
        Hub token with write access; default: the logged-in one (``hf auth login``, ``HF_TOKEN``).
    private : bool, optional
        Make a newly created repository private.
    revision : str, optional
        Branch to commit to (default: the main branch).
    commit_message : str
        Message of the commit.
    exclude : sequence of str
        More ``ignore_patterns`` (e.g. ``("timm/*",)``: the timm export goes to its own repository).
    repo_type : str, optional
        ``"space"`` for a Space (default: a model repository).
    space_sdk : str, optional
        The SDK of a new Space (``"gradio"``).

    Returns
    -------
    huggingface_hub.CommitInfo
        The commit (``commit_url``, ``oid``).

    Raises
    ------
    HubPushError
        Nothing to push, an invalid repository id, no token, a token the Hub rejects, no write
        access to the repository, Hub unreachable or offline mode; the message names the fix. The
        local folder is left untouched.
    """
    folder = Path(folder)
    ignore = [*PUSH_IGNORE_PATTERNS, *exclude]
    if not _has_files_to_push(folder, ignore):
        raise HubPushError(f"nothing to push: {folder} has no files (save the model there first).")
    api = HfApi(token=token, library_name="jtln_hf", library_version=__version__)
    try:
        space = {"repo_type": repo_type, "space_sdk": space_sdk} if repo_type == "space" else {}
        repo = api.create_repo(repo_id, private=private, exist_ok=True, **space)
        # a new list: upload_folder appends its default patterns to the one it is given
        return api.upload_folder(
            repo_id=repo.repo_id, folder_path=folder, ignore_patterns=list(ignore),
            commit_message=commit_message, revision=revision, **({"repo_type": repo_type} if repo_type else {}),
        )  # fmt: skip
    except HFValidationError as err:
        raise _push_error(repo_id, _invalid_repo_id(err), folder, exclude) from err
    except LocalTokenNotFoundError as err:
        problem = "no Hugging Face token found: log in with `hf auth login`, set HF_TOKEN or pass --hub_token"
        raise _push_error(repo_id, problem, folder, exclude) from err
    except OfflineModeIsEnabled as err:
        raise _push_error(repo_id, "HF_HUB_OFFLINE=1 is set: `unset HF_HUB_OFFLINE`", folder, exclude) from err
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status == 401:
            problem = ("the Hub rejected the token (401 Unauthorized) as invalid or expired: create a token with "
                       "write access at https://huggingface.co/settings/tokens and run `hf auth login` again")  # fmt: skip
        elif status == 403:
            problem = (
                f"no write access to {repo_id} (403 Forbidden): use your own user name or an organisation "
                "you can write to as the namespace, and a token with write permission"
            )
        else:
            problem = f"the Hub answered with an error ({status or 'no status'}): {str(err).splitlines()[0]}"
        raise _push_error(repo_id, problem, folder, exclude) from err
    except _network_errors() as err:
        problem = (f"the Hugging Face Hub ({constants.ENDPOINT}) cannot be reached ({type(err).__name__}: {err}): "
                   "check the network connection, proxy settings and HF_ENDPOINT")  # fmt: skip
        raise _push_error(repo_id, problem, folder, exclude) from err


def _has_files_to_push(folder: Path, ignore: list[str] | None = None) -> bool:
    """Whether ``upload_folder`` would upload anything: a file not left out by ``ignore`` (:data:`PUSH_IGNORE_PATTERNS`)."""
    files = (path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    return next(filter_repo_objects(files, ignore_patterns=list(ignore or PUSH_IGNORE_PATTERNS)), None) is not None


def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection-level exception types of the HTTP clients huggingface_hub may use."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                          ("requests.exceptions", ("ConnectionError", "Timeout"))):  # fmt: skip
        try:
            imported = __import__(module, fromlist=list(names))
        except ImportError:
            continue
        errors.extend(getattr(imported, name) for name in names if hasattr(imported, name))
    return tuple(errors)


__all__ = ["PUSH_IGNORE_PATTERNS", "HubPushError", "check_can_push", "push_model_folder", "save_model_folder"]
