"""Many scenes in one job: a list (text file or STAC collection) spread whole over torchrun's
ranks, one output each, resumable, one bad scene recorded while the others go on, and a
summary of the job; over two ranks the outputs equal one process's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import rasterio
from rasterio.transform import from_origin

from skysense_fast.cli import main
from skysense_fast.finetune.task import TaskSpec, build_task_model, save_task
from skysense_fast.infer.scenes import read_scene_list


def _scene(path, seed, H=96, W=64):
    img = (np.random.default_rng(seed).random((3, H, W)) * 255).astype(np.uint8)
    with rasterio.open(path, "w", driver="GTiff", height=H, width=W, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500000 + 100 * seed, 5000000, 0.5, 0.5)) as d:
        d.write(img)


def _list(tmp_path, bad=True):
    (tmp_path / "scenes").mkdir()
    names = ["a.tif", "b.tif", "c.tif"]
    for i, n in enumerate(names):
        _scene(tmp_path / "scenes" / n, i)
    if bad:
        (tmp_path / "scenes" / "broken.tif").write_text("not a raster")
        names.insert(1, "broken.tif")
    lines = ["# region 7", *[f"scenes/{n}" for n in names]]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "list.txt")


def _read(folder):
    out = {}
    for p in sorted(os.listdir(folder)):
        if p.endswith(".tif"):
            with rasterio.open(os.path.join(folder, p)) as d:
                out[p] = d.read()
    return out


def test_a_list_of_scenes_one_output_each_a_bad_one_recorded(tmp_path, capsys):
    scenes = _list(tmp_path)
    base = ["embed", scenes, "--tile", "64", "--overlap", "32"]
    assert main([*base, "-o", str(tmp_path / "out")]) == 1       # one scene failed: the job says so
    text = capsys.readouterr().out
    assert "3 done, 1 failed, 0 skipped" in text and "failed: " in text and "broken.tif" in text
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["done"], summary["failed"], summary["skipped"], summary["scenes"]) == (3, 1, 0, 4)
    (failed,) = [r for r in summary["records"] if r["status"] == "failed"]
    assert failed["scene"].endswith("broken.tif") and failed["error"].startswith("bad input")
    outs = _read(tmp_path / "out")
    assert sorted(outs) == ["a.tif", "b.tif", "c.tif"]
    # each output is the scene's own embedding
    assert main(["embed", str(tmp_path / "scenes" / "b.tif"), "-o", str(tmp_path / "b_alone.tif"), "--tile", "64",
                 "--overlap", "32"]) == 0
    with rasterio.open(tmp_path / "b_alone.tif") as d:
        np.testing.assert_array_equal(d.read(), outs["b.tif"])
    # --resume skips what is done and tries the rest again
    assert main([*base, "-o", str(tmp_path / "out"), "--resume"]) == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["done"], summary["failed"], summary["skipped"]) == (0, 1, 3)


def test_two_ranks_equal_one_process(tmp_path):
    scenes = _list(tmp_path, bad=False)
    base = ["embed", scenes, "--tile", "64", "--overlap", "32"]
    assert main([*base, "-o", str(tmp_path / "one")]) == 0
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    r = subprocess.run([torchrun, "--nproc_per_node=2", "-m", "skysense_fast.cli", *base, "-o", str(tmp_path / "two")],
                       check=False, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank 0 of 2: 2 of 3 scenes" in r.stdout and "rank 1 of 2: 1 of 3 scenes" in r.stdout
    one, two = _read(tmp_path / "one"), _read(tmp_path / "two")
    assert sorted(one) == sorted(two) == ["a.tif", "b.tif", "c.tif"]
    for k in one:
        np.testing.assert_array_equal(two[k], one[k])
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["done"] == 3 and {r["rank"] for r in summary["records"]} == {0, 1}


def test_predict_a_stac_list_of_hr_items(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    items = []
    for i in range(2):
        _scene(tmp_path / "img" / f"t{i}.tif", i)
        items.append({"type": "Feature", "stac_version": "1.0.0", "id": f"tile-{i}", "geometry": None,
                      "properties": {"datetime": "2021-05-01T00:00:00Z"}, "links": [],
                      "assets": {"image": {"href": f"img/t{i}.tif", "type": "image/tiff; application=geotiff",
                                           "roles": ["data"]}}})
    (tmp_path / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    assert [s.name for s in read_scene_list(tmp_path / "items.json")] == ["tile-0", "tile-1"]
    save_task(build_task_model(TaskSpec("segmentation", (1, 2), ("a", "b"), head_channels=8)), tmp_path / "t.st")
    assert main(["predict", str(tmp_path / "items.json"), "-o", str(tmp_path / "maps"), "--task",
                 str(tmp_path / "t.st"), "--tile", "64", "--overlap", "32"]) == 0
    assert sorted(_read(tmp_path / "maps")) == ["tile-0.tif", "tile-1.tif"]
    assert main(["predict", str(tmp_path / "items.json"), "-o", str(tmp_path / "maps"), "--task",
                 str(tmp_path / "t.st"), "--asset", "visual"]) == 2      # refused before any scene runs
    assert "has no asset 'visual'" in capsys.readouterr().err


def test_bad_lists_are_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "dup").mkdir()
    (tmp_path / "dup" / "x").mkdir()
    (tmp_path / "two.txt").write_text("dup/a.tif\ndup/x/a.tif\n")
    assert main(["embed", str(tmp_path / "two.txt"), "-o", str(tmp_path / "o")]) == 2
    assert "would both write a.tif" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("# nothing\n")
    assert main(["embed", str(tmp_path / "empty.txt"), "-o", str(tmp_path / "o")]) == 2
    assert "lists no scenes" in capsys.readouterr().err
    for bad in ("/etc/evil", "../../outside", "a b"):       # STAC ids become file names: plain ones only
        item = {"type": "Feature", "stac_version": "1.0.0", "id": bad, "geometry": None, "links": [],
                "properties": {"datetime": "2021-05-01T00:00:00Z"}, "assets": {"image": {"href": "x.tif"}}}
        (tmp_path / "evil.json").write_text(json.dumps({"type": "FeatureCollection", "features": [item]}))
        assert main(["embed", str(tmp_path / "evil.json"), "-o", str(tmp_path / "o")]) == 2
        assert "not a plain file name" in capsys.readouterr().err
    url = "https://example.org/tiles/a.tif?sv=2021&sig=secret"     # the query (a signing token) is no name
    (tmp_path / "urls.txt").write_text(url + "\n")
    assert [s.name for s in read_scene_list(tmp_path / "urls.txt")] == ["a"]
    assert read_scene_list(tmp_path / "urls.txt")[0].src == url
    (tmp_path / "file.tif").write_text("x")
    (tmp_path / "one.txt").write_text("a.tif\n")
    assert main(["embed", str(tmp_path / "one.txt"), "-o", str(tmp_path / "file.tif")]) == 2
    assert "is a file" in capsys.readouterr().err
