"""Many scenes in one job: a list of HR scenes (a text file of paths, or a STAC ItemCollection
of HR items) spread whole over the ranks of a torchrun job (``RANK`` / ``WORLD_SIZE``, over
any number of nodes; no process group is needed: ranks share nothing but the output folder).
Each scene gets its own output, resumable; one that fails is recorded and the others go on;
``summary.json`` in the output folder lists every scene as done, failed or skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from .. import atomic
from ..errors import InputError

logger = logging.getLogger(__name__)
SUMMARY = "summary.json"
_PARTS = ".summary"


@dataclass(frozen=True)
class Scene:
    src: str       # what GDAL opens
    name: str      # the output's file name, without .tif


def is_scene_list(path: str | os.PathLike) -> bool:
    """A list of scenes: a .txt file of paths, or a STAC ItemCollection / item (.json)."""
    return os.fspath(path).lower().endswith((".txt", ".json", ".geojson"))


def read_scene_list(path: str | os.PathLike, asset: str | None = None, distinct_names: bool = True) -> list[Scene]:
    """The scenes of ``path``. A text file: one path (or URL) per line, relative to the file's
    folder, ``#`` comments; a STAC file: each item's ``asset`` (default: ``visual``, ``image``,
    else its only GeoTIFF asset with the data role). Output names must be distinct (unless
    ``distinct_names`` is False: a list whose entries get no output of their own, e.g. chips)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"scene list not found: {path}")
    base = os.path.dirname(os.path.abspath(path))
    if path.lower().endswith(".txt"):
        scenes = []
        with open(path) as f:
            for line in f:
                text = line.strip()
                if text and not text.startswith("#"):   # whole-line comments: a URL may hold '#'
                    src = text if "://" in text or os.path.isabs(text) else os.path.join(base, text)
                    stem = os.path.splitext(os.path.basename(urllib.parse.urlsplit(text).path.rstrip("/")))[0]
                    scenes.append(Scene(src, _safe_name(stem, text, path)))
    else:
        from ..data.stac import load_items

        scenes = [Scene(_hr_asset(item, asset), _safe_name(str(item.id), f"item {item.id!r}", path))
                  for item in load_items(path)]
    if not scenes:
        raise InputError(f"{path} lists no scenes")
    seen: dict[str, str] = {}
    for s in scenes if distinct_names else ():
        if s.name in seen:
            raise InputError(f"{path}: {seen[s.name]} and {s.src} would both write {s.name}.tif (rename one)")
        seen[s.name] = s.src
    return scenes


_NAME = re.compile(r"[A-Za-z0-9][\w.-]*")


def _safe_name(name: str, what: str, path: str) -> str:
    """An output file name from a scene: letters, digits, '.', '-', '_' only (a STAC id or a
    file name holding a path, '..' or a URL query would write outside the output folder or leak
    a signing token into it)."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise InputError(f"{path}: {what} gives the output name {name!r}, which is not a plain file name "
                         "(letters, digits, '.', '-', '_'): rename the scene or the item")
    return name


def _hr_asset(item, asset: str | None) -> str:
    if asset is not None:
        if asset not in item.assets:
            raise InputError(f"STAC item {item.id} has no asset {asset!r} (assets: {', '.join(sorted(item.assets))})")
        return item.assets[asset].href
    for key in ("visual", "image"):
        if key in item.assets:
            return item.assets[key].href
    data = [a for a in item.assets.values() if "data" in (a.roles or []) and "tiff" in (a.media_type or "")]
    if len(data) == 1:
        return data[0].href
    raise InputError(f"STAC item {item.id}: which asset is the HR image? (assets: {', '.join(sorted(item.assets))}); "
                     "name it with --asset")


def job_id(scenes: list[Scene]) -> str:
    """What tells this job's summary parts from an earlier job's in the same folder: torchrun's
    run id (unique with --standalone or --rdzv-id), the scenes and the rank count."""
    run = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    digest = hashlib.sha256("\n".join(f"{s.src}\t{s.name}" for s in scenes).encode()).hexdigest()[:16]
    return f"{run}:{digest}:{ranks()[1]}"


def ranks() -> tuple[int, int]:
    """(rank, world size) as torchrun sets them; (0, 1) outside torchrun."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def run_scenes(scenes: list[Scene], out_dir: str | os.PathLike, work: Callable[[Scene, str], dict], *,
               resume: bool = False, what: str = "embed", suffix: str = ".tif") -> dict:
    """``work(scene, dst)`` for this rank's scenes (every WORLD_SIZE-th, from RANK), each into
    ``out_dir/<name><suffix>``. With ``resume``, scenes whose output exists are skipped. Returns
    this rank's records; the rank that finishes last writes the whole job's ``summary.json``."""
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError(f"-o {out_dir} is a file; a scene list writes one output per scene into a folder")
    rank, world = ranks()
    os.makedirs(os.path.join(out_dir, _PARTS), exist_ok=True)
    part = os.path.join(out_dir, _PARTS, f"rank{rank:05d}.json")
    job = job_id(scenes)
    if os.path.exists(part):
        os.unlink(part)   # an earlier job's: never merged into this one's summary
    mine = scenes[rank::world]
    records = []
    for i, scene in enumerate(mine):
        dst = os.path.join(out_dir, scene.name + suffix)   # a plain name (read_scene_list): inside out_dir
        record = {"scene": scene.src, "output": dst, "rank": rank}
        if resume and os.path.exists(dst):
            records.append(record | {"status": "skipped", "reason": "output exists (--resume)"})
            continue
        t0 = time.perf_counter()
        logger.info("%s %d/%d of rank %d: %s", what, i + 1, len(mine), rank, scene.src)
        try:
            info = work(scene, dst)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:   # one bad scene does not stop the others: recorded, then the next
            logger.error("%s: %s failed: %s", what, scene.src, " ".join(str(e).split())[:400])
            logger.debug("traceback of %s", scene.src, exc_info=True)
            kind = "bad input" if isinstance(e, (InputError, OSError)) or _is_input_error(e) else "internal error"
            records.append(record | {"status": "failed", "error": f"{kind}: {type(e).__name__}: {e}"})
            continue
        records.append(record | {"status": "done", "seconds": round(time.perf_counter() - t0, 2),
                                 **{k: _plain(v) for k, v in info.items()}})
    _write_json(part, {"job": job, "world": world, "scenes": len(scenes), "records": records})
    summary = _merge(out_dir, world, len(scenes), job)
    return {"records": records, "summary": summary}


def _is_input_error(e: Exception) -> bool:
    from ..errors import input_errors

    return isinstance(e, input_errors())


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def _merge(out_dir: str, world: int, total: int, job: str) -> dict | None:
    """The job's summary once every rank's part of this job is there (written by whichever
    rank sees them all last; two ranks doing so write the same file). Without a unique run
    id (plain torchrun without --standalone / --rdzv-id) a rerun of the same list can meet an
    earlier run's part of a rank that has not started yet; the last rank's merge is right."""
    parts = []
    for r in range(world):
        path = os.path.join(out_dir, _PARTS, f"rank{r:05d}.json")
        try:
            with open(path) as f:
                part = json.load(f)
        except (OSError, ValueError):
            return None      # another rank is still at work
        if part.get("job") != job or part.get("world") != world or part.get("scenes") != total:
            return None      # a part of another job in this folder
        parts.append(part)
    records = sorted((r for p in parts for r in p["records"]), key=lambda r: r["output"])
    counts = {s: sum(r["status"] == s for r in records) for s in ("done", "failed", "skipped")}
    summary = {"job": job, "scenes": total, "ranks": world, **counts, "records": records}
    _write_json(os.path.join(out_dir, SUMMARY), summary)
    return summary


def _write_json(path: str, data: dict) -> None:
    atomic.write_text(path, json.dumps(data, indent=1))


__all__ = ["SUMMARY", "Scene", "is_scene_list", "read_scene_list", "run_scenes"]
