"""eval / cluster / classify / preview on a tiny trained run (real files, real PNGs)."""

from __future__ import annotations

import json

import cv2
import pytest
from trainer_helpers import fit

from trainer.cli import main


@pytest.fixture(scope="module")
def tiny_run(tiny_catalogue, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "run"
    assert fit(tiny_catalogue, out, "--epochs", "8", "--lr", "5e-3", "--val-fraction", "0") == 0
    return out


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_eval_reports_figures_and_writes_a_sheet(tiny_run, tiny_catalogue, tmp_path, capsys):
    sheet = tmp_path / "sheet.png"
    js = tmp_path / "eval.json"
    assert main(["eval", str(tiny_run), "--gallery", str(tiny_catalogue), "--queries", str(tiny_catalogue),
                 "--sheet", str(sheet), "--json-out", str(js)]) == 0
    rep = _json(capsys)
    assert rep["top1"] == 1.0  # every query is also in the gallery
    assert 0 <= rep["mAP"] <= 1 and rep["top5"] >= rep["top1"] and rep["queries"] == 12
    assert json.loads(js.read_text())["top1"] == 1.0
    img = cv2.imread(str(sheet))
    assert img is not None and img.shape[0] > 100 and img.shape[1] > 300


def test_eval_against_one_image_per_item(tiny_run, tiny_catalogue, tmp_path, capsys):
    iconic = tmp_path / "iconic.csv"
    firsts = {p.parent: p for p in sorted(tiny_catalogue.rglob("*.jpg"))}
    iconic.write_text("path,item_id\n" + "".join(
        f"{p},{p.parent.relative_to(tiny_catalogue).as_posix()}\n" for p in firsts.values()))
    assert main(["eval", str(tiny_run), "--gallery", str(tiny_catalogue), "--queries", str(tiny_catalogue),
                 "--iconic", str(iconic)]) == 0
    rep = _json(capsys)
    assert rep["iconic_recall@5"] == 1.0  # only 4 items: every item is in the top 5
    assert 0 <= rep["iconic_recall@1"] <= 1


def test_eval_of_a_missing_run(tiny_catalogue, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope"), "--gallery", str(tiny_catalogue),
                 "--queries", str(tiny_catalogue)]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_cluster_writes_groups_and_scores_them(tiny_run, tiny_catalogue, tmp_path, capsys):
    out = tmp_path / "groups"
    assert main(["cluster", str(tiny_run), str(tiny_catalogue), "--k", "4", "--out", str(out)]) == 0
    rep = _json(capsys)
    assert 0 < rep["purity"] <= 1 and 0 <= rep["nmi"] <= 1
    groups = json.loads((out / "groups.json").read_text())["groups"]
    assert sum(len(g["images"]) for g in groups) == 12 and len(groups) == 4
    assert (out / "groups.csv").read_text().count("\n") == 13
    assert cv2.imread(str(out / "sheet.png")) is not None


def test_cluster_agglomerative_and_bad_k(tiny_run, tiny_catalogue, tmp_path, capsys):
    assert main(["cluster", str(tiny_run), str(tiny_catalogue), "--k", "2", "--method", "agglomerative",
                 "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert main(["cluster", str(tiny_run), str(tiny_catalogue), "--k", "50", "--out", str(tmp_path / "b")]) == 2
    assert "--k 50" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_classify_votes_and_says_unknown_below_threshold(tiny_run, tiny_catalogue, capsys):
    photo = sorted(tiny_catalogue.rglob("*.jpg"))[0]
    item = photo.parent.relative_to(tiny_catalogue).as_posix()
    assert main(["classify", str(tiny_run), "--gallery", str(tiny_catalogue), str(photo), "--json"]) == 0
    ans = _json(capsys)
    assert ans["item_id"] == item and ans["score"] > 0.99  # the photo itself is in the gallery
    assert main(["classify", str(tiny_run), "--gallery", str(tiny_catalogue), str(photo),
                 "--threshold", "1.0", "--json"]) == 0
    ans = _json(capsys)
    assert ans["item_id"] in ("unknown", item)
    assert main(["classify", str(tiny_run), "--gallery", str(tiny_catalogue), "missing.jpg"]) == 2


def test_preview_writes_a_grid(tiny_catalogue, tmp_path, capsys):
    out = tmp_path / "sheet.png"
    assert main(["preview", str(tiny_catalogue), "--out", str(out), "--views", "3", "--rows", "4"]) == 0
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] >= 4 * 64 and img.shape[1] >= 4 * 64
    assert main(["preview", str(tiny_catalogue), "--out", str(tmp_path / "x.jpg")]) == 2
