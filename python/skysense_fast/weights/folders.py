"""Where a model's weights live when they are not one file: a Hugging Face-style folder written
by :func:`~.hub.save_pretrained` (``config.json``, ``model.safetensors``, ``README.md``) or a hub
repository id resolved to one by ``huggingface_hub`` (only those three files fetched; it honours
``HF_HUB_OFFLINE``). Reads JSON only."""

from __future__ import annotations

import json
import os
import re

from ..errors import InputError

FORMAT = "skysense_fast"
FORMAT_VERSION = 1
WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_pretrained_folder(path: str | os.PathLike) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG))


_FILE_ENDINGS = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tif", ".tiff", ".json", ".yaml", ".yml")


def looks_like_repo_id(text: str) -> bool:
    """``owner/name`` that is no local path and does not end like a file (``runs/seg.safetensors``
    mistyped is a missing file, not a hub request): what the hub is asked for."""
    return (_REPO_ID.fullmatch(text) is not None and not os.path.exists(text)
            and not text.lower().endswith(_FILE_ENDINGS))


def resolve(source: str | os.PathLike, revision: str | None = None) -> str:
    """The local folder of ``source``: a folder written by :func:`save_pretrained`, or a hub
    repository id fetched (only its config, weights and card) into huggingface_hub's cache."""
    text = os.fspath(source)
    if os.path.isdir(text):
        if not is_pretrained_folder(text):
            raise InputError(f"{text} is a folder without {CONFIG}: not one written by save_pretrained")
        return text
    if not looks_like_repo_id(text):
        raise FileNotFoundError(f"weights not found: {text} (a file, a save_pretrained folder, or a hub id owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        folder = snapshot_download(text, revision=revision, allow_patterns=[CONFIG, WEIGHTS, CARD])
    except LocalEntryNotFoundError:
        raise InputError(f"{text}: not a local path, and the hub repository is not in the local cache "
                         "(offline: HF_HUB_OFFLINE is set or the hub is out of reach)") from None
    except GatedRepoError:   # before RepositoryNotFoundError: it is one
        raise InputError(f"{text}: the hub repository is gated: accept its terms on the hub and log in "
                         "(huggingface-cli login / HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise InputError(f"{text}: the hub repository has no revision {revision!r}") from None
    except (RepositoryNotFoundError, HFValidationError) as e:
        raise InputError(f"{text}: no such local path or hub repository ({' '.join(str(e).split())[:200]})") from None
    if not is_pretrained_folder(folder):
        raise InputError(f"{text}: the hub repository has no {CONFIG}: not a skysense_fast model")
    return folder


def read_config(folder: str) -> dict:
    """The checked ``config.json`` of a pretrained folder."""
    path = os.path.join(folder, CONFIG)
    try:
        with open(path) as f:
            raw = json.load(f)
    except ValueError as e:
        raise InputError(f"{path} is not JSON ({e})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise InputError(f"{path} is not a skysense_fast config (its \"format\" is not {FORMAT!r})")
    if raw.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path} has format version {raw.get('format_version')!r}; this version reads "
                         f"{FORMAT_VERSION}")
    for key, kind in (("model", dict), ("normalisation", dict), ("bands", dict)):
        if not isinstance(raw.get(key), kind):
            raise InputError(f"{path}: {key!r} must be a {kind.__name__}")
    if not os.path.isfile(os.path.join(folder, WEIGHTS)):
        raise InputError(f"{folder} has {CONFIG} but no {WEIGHTS}")
    return raw


def weights_file(source: str | os.PathLike, revision: str | None = None) -> str:
    """The safetensors file of a pretrained folder or hub id (what ``--weights`` and ``--task``
    load); a plain file is returned as it is."""
    text = os.fspath(source)
    if os.path.isfile(text):
        return text
    folder = resolve(text, revision)
    read_config(folder)
    return os.path.join(folder, WEIGHTS)
