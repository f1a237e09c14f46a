"""missing.drop_missing: the one policy every builder applies to images the annotations name but the
disk lacks."""

import numpy as np
import pandas as pd
import pytest

from mlrpl_data.errors import BadInputError
from mlrpl_data.missing import drop_missing


def rows(n: int) -> tuple[pd.DataFrame, np.ndarray]:
    frame = pd.DataFrame({"key": [f"k{i}" for i in range(n)], "split": ["train"] * (n - 1) + ["test"],
                          "path": [f"img/{i}.jpg" for i in range(n)], "width": [10 + i for i in range(n)],
                          "height": [20] * n})
    return frame, np.arange(n * 2, dtype=np.int8).reshape(n, 2)


def test_all_on_disk_changes_nothing():
    frame, labels = rows(3)
    out, lab, records = drop_missing(frame, labels, [True] * 3, False, "ROOT", "image(s) missing")
    assert out is frame and lab is labels and records == []


def test_refused_naming_the_count_and_the_first_five(tmp_path):
    frame, labels = rows(8)
    on_disk = [True, False, False, False, False, False, False, True]
    with pytest.raises(BadInputError) as e:
        drop_missing(frame, labels, on_disk, False, tmp_path, "image(s) missing on disk", root=tmp_path)
    assert str(e.value) == (f"{tmp_path}: 6 image(s) missing on disk: img/1.jpg, img/2.jpg, img/3.jpg, img/4.jpg, "
                            f"img/5.jpg and 1 more; pass --allow-missing to drop them (they are listed in dataset.json)")


def test_allowed_drops_them_and_records_them_in_row_order_with_notes():
    frame, labels = rows(4)
    out, lab, records = drop_missing(frame, labels, np.array([False, True, True, False]), True, "ROOT", "x",
                                     notes={"annotation_missing": [True, False, False, False]})
    assert out["key"].tolist() == ["k1", "k2"] and out.index.tolist() == [0, 1] and out["width"].tolist() == [11, 12]
    assert lab.tolist() == [[2, 3], [4, 5]]
    assert records == [{"key": "k0", "split": "train", "path": "img/0.jpg", "annotation_missing": True},
                       {"key": "k3", "split": "test", "path": "img/3.jpg", "annotation_missing": False}]
