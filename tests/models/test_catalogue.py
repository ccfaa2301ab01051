from __future__ import annotations

import pytest

from models.catalogue import iter_images, load_catalogue
from models.errors import CatalogueError, ImageError
from models.images import read_image


def test_folder_tree_items_are_relative_paths(tiny_catalogue):
    cat = load_catalogue(tiny_catalogue)
    assert cat.item_ids == ["Group0/Item-0", "Group0/Item-2", "Group1/Item-1", "Group1/Item-3"]
    assert len(cat) == 12
    assert cat.names()["Group1/Item-3"] == "Item-3"


def test_csv_catalogue_with_header_and_names(tmp_path, tiny_catalogue):
    photo = next(tiny_catalogue.rglob("*.jpg"))
    csv = tmp_path / "cat.csv"
    csv.write_text(f"path,item_id,name\n{photo},sku-1,Tea\n\n{photo},sku-2\n")
    cat = load_catalogue(csv)
    assert [(e.item_id, e.name) for e in cat.entries] == [("sku-1", "Tea"), ("sku-2", None)]
    assert cat.names() == {"sku-1": "Tea", "sku-2": "sku-2"}


def test_csv_relative_paths_resolve_beside_the_csv(tmp_path, tiny_catalogue):
    import shutil

    shutil.copy(next(tiny_catalogue.rglob("*.jpg")), tmp_path / "a.jpg")
    (tmp_path / "c.csv").write_text("a.jpg,x\n")
    assert load_catalogue(tmp_path / "c.csv").entries[0].path == tmp_path / "a.jpg"


@pytest.mark.parametrize("content,msg", [("a.jpg\n", "expected path,item_id"), ("a.jpg, \n", "empty item_id"),
                                         ("", "empty")])
def test_csv_errors_name_the_line(tmp_path, content, msg):
    p = tmp_path / "c.csv"
    p.write_text(content)
    with pytest.raises(CatalogueError, match=msg):
        load_catalogue(p)


def test_missing_and_empty(tmp_path):
    with pytest.raises(CatalogueError, match="no such"):
        load_catalogue(tmp_path / "nope")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(CatalogueError, match="empty"):
        load_catalogue(tmp_path / "empty")


def test_corrupt_image_is_skipped_and_reported(tmp_path, tiny_catalogue, caplog):
    import shutil

    root = tmp_path / "cat"
    shutil.copytree(tiny_catalogue, root)
    bad = root / "Group0" / "Item-0" / "zz_bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    cat = load_catalogue(root)
    assert any(e.path == bad for e in cat.entries)
    with pytest.raises(ImageError, match="zz_bad.jpg"):
        read_image(bad)
    good = list(iter_images(cat.entries))
    assert len(good) == 12
    assert "zz_bad.jpg" in caplog.text


def test_unlabelled(tiny_catalogue):
    cat = load_catalogue(tiny_catalogue, labelled=False)
    assert cat.item_ids == [] and all(e.item_id is None for e in cat.entries)
