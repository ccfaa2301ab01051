"""Bad input to `trainer fit`: one line naming the problem, exit 2, nothing half-written."""

from __future__ import annotations

import shutil

import pytest
from trainer_helpers import fit

from trainer.cli import main


def _one_line(err: str) -> str:
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_missing_catalogue_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert fit(tmp_path / "nope", out, "--epochs", "1") == 2
    line = _one_line(capsys.readouterr().err)
    assert "nope" in line and "no such catalogue" in line
    assert not out.exists()


def test_empty_catalogue(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "run"
    assert fit(tmp_path / "empty", out, "--epochs", "1") == 2
    assert "empty" in _one_line(capsys.readouterr().err)
    assert not out.exists()


def test_catalogue_of_only_corrupt_images(tmp_path, capsys):
    bad = tmp_path / "bad" / "Item"
    bad.mkdir(parents=True)
    (bad / "a.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "run"
    assert fit(tmp_path / "bad", out, "--epochs", "1") == 2
    assert "no readable images" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not out.exists()


def test_corrupt_image_is_reported_and_skipped(tiny_catalogue, tmp_path, caplog):
    cat = tmp_path / "cat"
    shutil.copytree(tiny_catalogue, cat)
    broken = next(cat.rglob("*.jpg"))
    broken.write_bytes(broken.read_bytes()[:100])  # truncated JPEG
    out = tmp_path / "run"
    assert fit(cat, out, "--epochs", "1") == 0
    assert str(broken) in caplog.text
    assert '"images": 11' in (out / "config.json").read_text()


def test_unknown_flag(tiny_catalogue, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["fit", str(tiny_catalogue), "--out", str(out), "--frobnicate"])
    assert exc.value.code == 2
    assert "--frobnicate" in _one_line(capsys.readouterr().err)
    assert not out.exists()


def test_missing_required_argument_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit"])
    assert exc.value.code == 2
    line = _one_line(capsys.readouterr().err)
    assert "catalogue" in line and "--out" in line


def test_out_is_a_file(tiny_catalogue, tmp_path, capsys):
    out = tmp_path / "file.txt"
    out.write_text("keep me")
    assert fit(tiny_catalogue, out, "--epochs", "1") == 2
    assert "not a folder" in _one_line(capsys.readouterr().err)
    assert out.read_text() == "keep me"


def test_out_is_an_unrelated_folder(tiny_catalogue, tmp_path, capsys):
    out = tmp_path / "stuff"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert fit(tiny_catalogue, out, "--epochs", "1") == 2
    assert "not empty" in _one_line(capsys.readouterr().err)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_resume_of_a_folder_that_is_not_a_run(tiny_catalogue, tmp_path, capsys):
    assert fit(tiny_catalogue, tmp_path, "--epochs", "1", "--resume") == 2
    assert "cannot resume" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("flags,needle", [
    (["--epochs", "0"], "--epochs"),
    (["--val-fraction", "1.5"], "--val-fraction"),
    (["--w-inv", "-1"], "--w-inv"),
    (["--width", "2"], "width"),
    (["--min-crop-area", "0"], "--min-crop-area"),
    (["--stem-stride", "3"], "--stem-stride"),
    (["--cutmix", "1.5"], "--cutmix"),
    (["--early-size", "32"], "--early-size"),  # not smaller than --size 32
    (["--early-size", "2"], "--early-size"),  # under a 1x1 feature map
    (["--early-size", "16", "--early-until", "2"], "--early-until"),
    (["--freeze", "2"], "--freeze applies to --backbone lite0"),
    (["--backbone", "lite0"], "--width applies to --backbone scratch"),
])
def test_bad_values(tiny_catalogue, tmp_path, capsys, flags, needle):
    out = tmp_path / "run"
    assert fit(tiny_catalogue, out, *flags) == 2
    assert needle in _one_line(capsys.readouterr().err)
    assert not out.exists()
