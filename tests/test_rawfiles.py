"""Real files as labs have them (mlrpl_data/rawfiles.py): a BOM, CRLF, blank lines, spaces, header rows,
sub-folders, './' and Windows '\\' in file names give the labels of the clean file, in every builder;
what is truly wrong (a path leaving the root, one image twice, a field missing) is one line naming
the file, the record and the fix."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlrpl_data.coco import CocoConfig, build_coco
from mlrpl_data.csvlabels import CsvConfig, build_csv
from mlrpl_data.errors import BadInputError
from mlrpl_data.fsutil import sha256_file
from mlrpl_data.lvis import LvisConfig, build_lvis
from mlrpl_data.nuswide import NuswideConfig, build_nuswide
from mlrpl_data.openimages import OpenImagesConfig, build_openimages
from mlrpl_data.rawfiles import raw_path, read_csv, read_lines
from mlrpl_data.vg import SsgrlConfig, VgConfig, build_vg200, build_vg200_ssgrl
from mlrpl_data.voc import VocConfig, build_voc07

from conftest import make_coco, make_vg, make_voc, write_jpeg
from test_natural import lab_csv, lvis, nuswide, open_images

BOM = "\ufeff"


def windows(text: str) -> bytes:
    """What a Windows editor saves: a BOM, CRLF line ends."""
    return (BOM + text.replace("\n", "\r\n")).encode("utf-8")


# ---- the shared readers ---------------------------------------------------------------------------------------

@pytest.mark.fuzzclass("raw-file encodings")
def test_lines_and_csv_rows_keep_only_data(tmp_path):
    f = tmp_path / "l.txt"
    f.write_bytes(windows(" a \n\n  \nb\rc\n"))
    assert read_lines(f) == [(1, "a"), (4, "b"), (5, "c")]  # line numbers as an editor shows them
    f.write_bytes(windows("LabelName,DisplayName,\n/m/1, Person ,\n\n/m/2,Car\n"))
    assert read_csv(f, header=["LabelName", "DisplayName"]) == (["LabelName", "DisplayName"],
                                                                [(2, ["/m/1", "Person"]), (4, ["/m/2", "Car"])])
    f.write_bytes(windows("/m/1,Person\nlabelname , displayname\n/m/2,Car\n"))
    with pytest.raises(BadInputError, match=r"l\.txt: line 2 repeats the header row .*remove the line"):
        read_csv(f, header=["LabelName", "DisplayName"])
    f.write_text("path,cat,\na.jpg,1,x\n")
    with pytest.raises(BadInputError, match=r"column 3 has no name in the header but line 2 fills it \('x'\)"):
        read_csv(f, header_required=True)


@pytest.mark.parametrize("name,rel", [("shelf/a.jpg", "shelf/a.jpg"), ("./a.jpg", "a.jpg"), ("shelf\\a.jpg", "shelf/a.jpg"),
                                      (".\\shelf\\\\a.jpg", "shelf/a.jpg"), ("a/./b.jpg", "a/b.jpg")])
@pytest.mark.fuzzclass("path forms")
def test_one_path_rule(name, rel):
    assert raw_path(name, "f.json: images[0]") == rel


@pytest.mark.parametrize("name", ["../a.jpg", "a/../../b.jpg", "/etc/passwd", "C:\\x.jpg", "\\\\server\\a.jpg", " ", "."])
@pytest.mark.fuzzclass("path forms")
def test_paths_leaving_the_root_are_refused(name):
    with pytest.raises(BadInputError, match=r"^f\.json: images\[0\]: (path .* leaves the image folder|file name)"):
        raw_path(name, "f.json: images[0]")


# ---- item 1: COCO file names with sub-folders, './' and '\' ----------------------------------------------------

def _coco_names(root: Path, names: dict[int, str]) -> Path:
    """Rename train images to `names` (the annotation's file_name), moving each file to match."""
    p = root / "annotations" / "instances_train2014.json"
    doc = json.loads(p.read_text())
    for im in doc["images"]:
        if im["id"] in names:
            src = root / "train2014" / im["file_name"]
            dst = root / "train2014" / names[im["id"]].replace("\\", "/")
            dst.parent.mkdir(parents=True, exist_ok=True)
            src.rename(dst)
            im["file_name"] = names[im["id"]]
    p.write_text(json.dumps(doc))
    return root


@pytest.mark.fuzzclass("path forms")
def test_coco_file_names_with_sub_folders_are_found(tmp_path):
    root = _coco_names(make_coco(tmp_path / "coco"), {10: "shelf/a.jpg", 11: "./b.jpg", 12: "shelf\\deep\\c.jpg"})
    m = build_coco(CocoConfig(root=root, subset=True, progress=False))
    assert m.images["path"].tolist()[:3] == ["train2014/shelf/a.jpg", "train2014/b.jpg", "train2014/shelf/deep/c.jpg"]
    assert m.counts() == {"train": 3, "test": 2}
    dropped = build_coco(CocoConfig(root=root, subset=True, allow_missing=True, progress=False))
    assert dropped.extra["missing"] == [] and dropped.counts() == {"train": 3, "test": 2}  # nothing real dropped


@pytest.mark.fuzzclass("path forms")
def test_coco_bad_file_names_are_one_line(tmp_path):
    root = _coco_names(make_coco(tmp_path / "coco"), {10: "a.jpg", 11: "./a.jpg"})
    with pytest.raises(BadInputError, match=r"instances_train2014\.json: images\[1\] \(id 11\): file under train2014/ "
                                            r"'a\.jpg' is also in .*images\[0\] \(id 10\); keep one of them"):
        build_coco(CocoConfig(root=root, subset=True, progress=False))
    root = make_coco(tmp_path / "c2")
    p = root / "annotations" / "instances_train2014.json"
    doc = json.loads(p.read_text())
    doc["images"][0]["file_name"] = "..\\secret.jpg"
    p.write_text(json.dumps(doc))
    with pytest.raises(BadInputError, match=r"images\[0\] \(id 10\): path '\.\.\\\\secret\.jpg' leaves the image folder"):
        build_coco(CocoConfig(root=root, subset=True, progress=False))


@pytest.mark.fuzzclass("path forms")
def test_coco_name_differing_in_case_is_named(tmp_path):
    root = make_coco(tmp_path / "coco")
    f = root / "train2014" / "COCO_train2014_000000000010.jpg"
    f.rename(f.with_suffix(".JPG"))
    with pytest.raises(BadInputError, match=r"1 referenced image\(s\) missing on disk: train2014/COCO_train2014_000000000010\.jpg; "
                                            r"train2014/COCO_train2014_000000000010\.jpg is not there but "
                                            r"train2014/COCO_train2014_000000000010\.JPG is \(the name differs in case"):
        build_coco(CocoConfig(root=root, subset=True, progress=False))


@pytest.mark.fuzzclass("raw-file encodings")
def test_coco_json_with_bom(tmp_path):
    root = make_coco(tmp_path / "coco")
    clean = build_coco(CocoConfig(root=root, subset=True, progress=False))
    for p in (root / "annotations").glob("*.json"):
        p.write_bytes(windows(p.read_text()))
    assert build_coco(CocoConfig(root=root, subset=True, progress=False)).labels.tolist() == clean.labels.tolist()


# ---- item 2: VOC lists saved by Windows editors --------------------------------------------------------------

@pytest.mark.fuzzclass("raw-file encodings")
def test_voc_lists_with_bom_crlf_blank_lines_and_spaces(tmp_path):
    root = make_voc(tmp_path / "voc")
    clean = build_voc07(VocConfig(root=root, subset=True, progress=False))
    main = root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    (main / "trainval.txt").write_bytes(windows("000005\n 000007 \n\n000009\n\n"))
    (main / "test.txt").write_bytes(windows("000001\n000002"))  # no final line end
    m = build_voc07(VocConfig(root=root, subset=True, progress=False))
    assert m.keys.tolist() == ["voc2007_trainval_000005", "voc2007_trainval_000007", "voc2007_trainval_000009",
                               "voc2007_test_000001", "voc2007_test_000002"]
    assert m.labels.tolist() == clean.labels.tolist() and m.extra["missing"] == []
    assert m.sources[0]["sha256"] == sha256_file(main / "trainval.txt")  # the file's bytes, BOM included


@pytest.mark.fuzzclass("raw records and labels")
def test_voc_image_in_both_splits_or_twice_is_refused(tmp_path):
    root = make_voc(tmp_path / "voc")
    main = root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    (main / "test.txt").write_text("000001\n000007\n")
    with pytest.raises(BadInputError, match=r"test\.txt: image id 000007 is also in trainval\.txt; an image belongs to one split"):
        build_voc07(VocConfig(root=root, subset=True, progress=False))
    (main / "test.txt").write_bytes(windows("000001\n\n000001 \n"))
    with pytest.raises(BadInputError, match=r"test\.txt: image id 000001 listed twice \(lines 1 and 3\)"):
        build_voc07(VocConfig(root=root, subset=True, progress=False))


# ---- item 3: Open Images class descriptions with a BOM and a header ------------------------------------------

@pytest.mark.fuzzclass("raw-file encodings")
def test_open_images_descriptions_with_bom_and_header(tmp_path):
    root = open_images(tmp_path / "oi")
    clean = build_openimages(OpenImagesConfig(root=root, progress=False))
    (root / "class-descriptions-boxable.csv").write_bytes(windows(
        "LabelName,DisplayName\n/m/01g317,Person\n\n/m/0k4j, Car \n/m/07jdr,Train\n"))
    for name in ("train", "test"):
        p = root / f"{name}-annotations-human-imagelabels-boxable.csv"
        p.write_bytes(windows(p.read_text()))
    m = build_openimages(OpenImagesConfig(root=root, progress=False))
    assert m.category_names == ["Person", "Car", "Train"]  # no class named DisplayName
    assert m.fingerprint == clean.fingerprint
    (root / "class-descriptions-boxable.csv").write_text("/m/01g317,Person\n/m/0k4j,Car\n/m/01g317,Human\n")
    with pytest.raises(BadInputError, match=r"class-descriptions-boxable\.csv: line 3: LabelName /m/01g317 is described twice"):
        build_openimages(OpenImagesConfig(root=root, progress=False))


@pytest.mark.fuzzclass("raw-file encodings")
def test_open_images_class_file_with_bom_and_header(tmp_path):
    root = open_images(tmp_path / "oi")
    classes = tmp_path / "classes.csv"
    classes.write_bytes(windows("LabelName,DisplayName\n/m/07jdr,Train\n\n /m/0k4j \n"))
    m = build_openimages(OpenImagesConfig(root=root, classes=str(classes), progress=False))
    assert m.category_source_ids == ["/m/07jdr", "/m/0k4j"] and m.category_names == ["Train", "Car"]


# ---- item 4: every JSON field a builder reads, checked per record -------------------------------------------

@pytest.mark.fuzzclass("raw records and labels")
def test_lvis_record_without_a_field_is_one_line(tmp_path):
    root = lvis(tmp_path / "lvis")
    doc = json.loads((root / "lvis_v1_train.json").read_text())
    del doc["images"][1]["width"]
    (root / "lvis_v1_train.json").write_text(json.dumps(doc))
    with pytest.raises(BadInputError, match=r"lvis_v1_train\.json: images\[1\] \(id 12\) field 'width' must be int, got missing"):
        build_lvis(LvisConfig(root=root, progress=False))
    doc["images"][1]["width"] = 62
    doc["images"][0]["neg_category_ids"] = ["2"]
    (root / "lvis_v1_train.json").write_text(json.dumps(doc))
    with pytest.raises(BadInputError, match=r"images\[0\] \(id 11\) field 'neg_category_ids' holds '2', not a category id"):
        build_lvis(LvisConfig(root=root, progress=False))
    doc["images"][0]["neg_category_ids"] = [2]
    doc["annotations"][0]["category_id"] = None
    (root / "lvis_v1_train.json").write_text(json.dumps(doc))
    with pytest.raises(BadInputError, match=r"annotations\[0\] \(id 0\) field 'category_id' must be int, got NoneType"):
        build_lvis(LvisConfig(root=root, progress=False))


@pytest.mark.fuzzclass("raw records and labels")
def test_lvis_image_in_both_files_is_refused(tmp_path):
    root = lvis(tmp_path / "lvis")
    doc = json.loads((root / "lvis_v1_val.json").read_text())
    doc["images"][1]["coco_url"] = "http://images.cocodataset.org/train2017/000000000012.jpg"  # in lvis_v1_train too
    (root / "lvis_v1_val.json").write_text(json.dumps(doc))
    with pytest.raises(BadInputError, match=r"lvis_v1_train\.json: images\[1\] \(id 12\) and .*lvis_v1_val\.json: "
                                            r"images\[1\] \(id 22\) are the same image train2017/000000000012\.jpg"):
        build_lvis(LvisConfig(root=root, progress=False))


@pytest.mark.fuzzclass("raw-file encodings")
def test_vg_records_and_bom(tmp_path):
    raw = make_vg(tmp_path / "raw")
    clean = build_vg200(VgConfig(root=raw, num_classes=4, test_size=2, progress=False))
    for name in ("image_data.json", "objects.json"):
        (raw / name).write_bytes(windows((raw / name).read_text()))
    (raw / "object_alias.txt").write_bytes(windows("\nfoo,bar\n"))
    again = build_vg200(VgConfig(root=raw, num_classes=4, test_size=2, progress=False))
    assert again.labels.tolist() == clean.labels.tolist() and again.category_names == clean.category_names
    data = json.loads((raw / "image_data.json").read_text(encoding="utf-8-sig"))
    del data[2]["height"]
    (raw / "image_data.json").write_text(json.dumps(data))
    with pytest.raises(BadInputError, match=r"image_data\.json: image_data\[2\] \(id 3\) field 'height' must be int, got missing"):
        build_vg200(VgConfig(root=raw, num_classes=4, test_size=2, progress=False))


@pytest.mark.fuzzclass("raw-file encodings")
def test_ssgrl_lists_from_windows(tmp_path):
    raw = tmp_path / "vg"
    names = ["1.jpg", "2.jpg", "3.jpg"]
    for i, n in enumerate(names):
        write_jpeg(raw / "VG_100K" / n, size=(20 + i, 10))
    (tmp_path / "train.txt").write_bytes(windows("1.jpg\n\n./2.jpg\n"))
    (tmp_path / "test.txt").write_bytes(windows("VG_100K\\3.jpg\n"))
    (tmp_path / "labels.json").write_bytes(windows(json.dumps({n: [0] for n in ["1.jpg", "2.jpg", "VG_100K/3.jpg"]})))
    cfg = dict(root=raw, train_list=tmp_path / "train.txt", test_list=tmp_path / "test.txt", labels=tmp_path / "labels.json")
    m = build_vg200_ssgrl(SsgrlConfig(**cfg))
    assert m.images["path"].tolist() == ["VG_100K/1.jpg", "VG_100K/2.jpg", "VG_100K/3.jpg"]
    assert m.keys.tolist() == ["vg_1", "vg_2", "vg_3"] and m.images["width"].tolist() == [20, 21, 22]
    (tmp_path / "test.txt").write_text("x.jpg\n2.jpg\n")
    with pytest.raises(BadInputError, match=r"test\.txt:2: image '2\.jpg' is also in .*train\.txt:3"):
        build_vg200_ssgrl(SsgrlConfig(**cfg))


# ---- NUS-WIDE: the same rules -----------------------------------------------------------------------------------

@pytest.mark.fuzzclass("raw-file encodings")
def test_nuswide_files_from_windows(tmp_path):
    root = nuswide(tmp_path / "nus")
    clean = build_nuswide(NuswideConfig(root=root, progress=False))
    for p in [*(root / "Groundtruth" / "TrainTestLabels").glob("*.txt"), *(root / "ImageList").glob("*.txt"),
              root / "ConceptsList" / "Concepts81.txt"]:
        p.write_bytes(windows(p.read_text().replace("\r\n", "\n") + "\n\n"))
    m = build_nuswide(NuswideConfig(root=root, progress=False))
    assert m.category_names == ["animal", "sky", "water"] and m.labels.tolist() == clean.labels.tolist()
    assert m.fingerprint == clean.fingerprint
    test_list = root / "ImageList" / "TestImagelist.txt"
    test_list.write_text("animal\\0004_4444.jpg\r\n.\\sky\\0002_2222.jpg\r\n")
    with pytest.raises(BadInputError, match=r"TestImagelist\.txt:2: image 'sky/0002_2222\.jpg' is also in "
                                            r".*TrainImagelist\.txt:2; keep one of them"):
        build_nuswide(NuswideConfig(root=root, progress=False))


# ---- item 5: a lab CSV: one file, one row --------------------------------------------------------------------

@pytest.mark.fuzzclass("raw-file encodings")
def test_csv_from_windows_gives_the_same_dataset(tmp_path):
    text = "path,split,cat,dog\nimg/a0.jpg,train,1,-1\nimg/a1.jpg,train,,1\nimg/a2.jpg,test,0,-1\nimg/a3.jpg,test,-1,\n"
    clean = build_csv(CsvConfig(labels=lab_csv(tmp_path, text), images=tmp_path, progress=False))
    messy = "path,split,cat,dog,\n./img/a0.jpg , train,1,-1,\nimg\\a1.jpg,train,,1,\n\nimg/a2.jpg,test,0,-1,\nimg/a3.jpg,test,-1,,\n\n"
    (tmp_path / "labels.csv").write_bytes(windows(messy))
    m = build_csv(CsvConfig(labels=tmp_path / "labels.csv", images=tmp_path, progress=False))
    assert m.category_names == ["cat", "dog"] and m.labels.tolist() == [[1, -1], [0, 1], [0, -1], [-1, 0]]
    assert m.keys.tolist() == ["custom_img_a0", "custom_img_a1", "custom_img_a2", "custom_img_a3"]
    assert m.images["path"].tolist() == clean.images["path"].tolist() and m.labels.tolist() == clean.labels.tolist()


@pytest.mark.fuzzclass("path forms")
def test_csv_one_file_in_two_rows_is_refused(tmp_path):
    f = lab_csv(tmp_path, "path,split,cat\nimg/a0.jpg,train,1\nimg/a1.jpg,train,-1\n./img/a0.jpg,test,-1\n")
    with pytest.raises(BadInputError, match=r"labels\.csv: line 4: image 'img/a0\.jpg' is also in .*labels\.csv: line 2; "
                                            r"keep one of them"):
        build_csv(CsvConfig(labels=f, images=tmp_path, progress=False))
    write_jpeg(tmp_path / "img" / "a0.png")
    f = lab_csv(tmp_path, "path,split,cat\nimg/a0.jpg,train,1\nimg/a0.png,test,-1\n")
    with pytest.raises(BadInputError, match=r"line 3: image key .* 'custom_img_a0' is also in .*line 2"):
        build_csv(CsvConfig(labels=f, images=tmp_path, progress=False))


# ---- item 6: a 0/1 export, and labels without a known negative ---------------------------------------------

ZERO_ONE = "path,split,cat,dog\nimg/a0.jpg,train,1,0\nimg/a1.jpg,train,0,1\nimg/a2.jpg,test,1,0\nimg/a3.jpg,test,0,0\n"


@pytest.mark.fuzzclass("raw records and labels")
def test_csv_of_zeros_and_ones_is_not_guessed(tmp_path):
    f = lab_csv(tmp_path, ZERO_ONE)
    with pytest.raises(BadInputError, match=r"labels\.csv: the class columns hold 0 and 1 but never -1.*"
                                            r"--zero-means absent or --zero-means unknown"):
        build_csv(CsvConfig(labels=f, images=tmp_path, progress=False))
    absent = build_csv(CsvConfig(labels=f, images=tmp_path, zero_means="absent", progress=False))
    assert absent.labels.tolist() == [[1, -1], [-1, 1], [1, -1], [-1, -1]] and absent.warnings() == []
    assert absent.options["zero_means"] == "absent"
    unknown = build_csv(CsvConfig(labels=f, images=tmp_path, zero_means="unknown", progress=False))
    assert unknown.labels.tolist() == [[1, 0], [0, 1], [1, 0], [0, 0]]
    assert unknown.warnings()[0].startswith("no label is a known negative (-1)")
    # with -1 in the file, 0 is unknown as the format says: no flag needed
    plain = build_csv(CsvConfig(labels=lab_csv(tmp_path, ZERO_ONE.replace("a3.jpg,test,0,0", "a3.jpg,test,-1,0")),
                                images=tmp_path, progress=False))
    assert plain.labels.tolist() == [[1, 0], [0, 1], [1, 0], [-1, 0]]
    assert plain.warnings() == ["1 class(es) have no known negative in the test split (their AP is 1 whatever the "
                                "scores): dog"]


@pytest.mark.fuzzclass("raw records and labels")
def test_build_warns_on_stderr_and_records_it(tmp_path):
    from mlrpl.cli import app

    f, out = lab_csv(tmp_path / "lab", ZERO_ONE), tmp_path / "d"
    r = CliRunner().invoke(app, ["build-csv", "--labels", str(f), "--images", str(tmp_path / "lab"), "--out", str(out),
                                 "--no-progress"])
    assert r.exit_code == 1 and "--zero-means absent or --zero-means unknown" in r.output
    assert not (out).exists()
    r = CliRunner().invoke(app, ["build-csv", "--labels", str(f), "--images", str(tmp_path / "lab"), "--out", str(out),
                                 "--zero-means", "unknown", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert r.stderr.startswith("warning: no label is a known negative (-1)") and len(r.stderr.splitlines()) == 1
    card = json.loads((out / "dataset.json").read_text())
    assert card["warnings"] == [r.stderr.strip().removeprefix("warning: ")]
    assert r.stderr.strip() in CliRunner().invoke(app, ["stats", str(out)]).output
    assert "Warning: no label is a known negative" in (out / "README.md").read_text()


@pytest.mark.fuzzclass("raw records and labels")
def test_open_images_image_in_both_splits_is_refused(tmp_path):
    root = open_images(tmp_path / "oi")
    (root / "test-annotations-human-imagelabels-boxable.csv").write_text(
        "ImageID,Source,LabelName,Confidence\n000b1,verification,/m/0k4j,1\n000a2,verification,/m/07jdr,0\n")
    with pytest.raises(BadInputError, match=r"test-annotations-human-imagelabels-boxable\.csv: image 000a2 is also in "
                                            r"train-annotations-human-imagelabels-boxable\.csv"):
        build_openimages(OpenImagesConfig(root=root, progress=False))


@pytest.mark.fuzzclass("raw-file encodings")
def test_csv_with_another_separator_says_so(tmp_path):
    f = lab_csv(tmp_path, "path;split;cat\nimg/a0.jpg;train;1\n")
    with pytest.raises(BadInputError, match=r"labels\.csv: fields are separated by ';', not ','; export it as comma-separated"):
        build_csv(CsvConfig(labels=f, images=tmp_path, progress=False))


@pytest.mark.fuzzclass("raw records and labels")
def test_lvis_category_both_annotated_and_verified_absent_is_refused(tmp_path):
    """The positive used to win silently: which of the two is true is the annotators', not ours, to say."""
    root = lvis(tmp_path / "lvis")
    doc = json.loads((root / "lvis_v1_train.json").read_text())
    a = doc["annotations"][0]
    im = next(i for i in doc["images"] if i["id"] == a["image_id"])
    im["neg_category_ids"] = sorted(set(im.get("neg_category_ids", [])) | {a["category_id"]})
    (root / "lvis_v1_train.json").write_text(json.dumps(doc))
    with pytest.raises(BadInputError, match=rf"lvis_v1_train\.json: annotation {a['id']} marks category "
                                            rf"{a['category_id']} present in image {a['image_id']}, whose "
                                            r"neg_category_ids says it is absent"):
        build_lvis(LvisConfig(root=root, progress=False))
