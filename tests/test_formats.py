"""Each builder declares its source's licence and citation (formats.FORMATS -> the module's TERMS);
the dataset card shows them byte for byte as the card did when they were tables in card.py."""

import json
from pathlib import Path

import pytest

from mlrpl_data import card as card_mod
from mlrpl_data.folder import DatasetFolder
from mlrpl_data.formats import FORMATS, source_terms

# the card's `license:` line, Licence section and "The dataset:" citation as mlrpl wrote them before the move
PINNED = {
    "coco": ("cc-by-4.0", "COCO annotations: CC BY 4.0 (https://cocodataset.org/#termsofuse); the images are Flickr "
             "photos under the Flickr terms of use.",
             "Lin et al., Microsoft COCO: Common Objects in Context, ECCV 2014."),
    "voc": ("other", "PASCAL VOC 2007: the images are Flickr photos under the Flickr terms of use; the annotations are "
            "for research use (http://host.robots.ox.ac.uk/pascal/VOC/voc2007/).",
            "Everingham et al., The PASCAL Visual Object Classes (VOC) Challenge, IJCV 2010."),
    "vg-raw": ("cc-by-4.0", "Visual Genome: CC BY 4.0 (https://homes.cs.washington.edu/~ranjay/visualgenome/).",
               "Krishna et al., Visual Genome: Connecting Language and Vision Using Crowdsourced Dense Image "
               "Annotations, IJCV 2017."),
    "vg-ssgrl": ("cc-by-4.0", "Visual Genome: CC BY 4.0; the benchmark split lists come from SSGRL "
                 "(https://github.com/HCPLab-SYSU/SSGRL).",
                 "Krishna et al., Visual Genome, IJCV 2017; Chen et al., Learning Semantic-Specific Graph "
                 "Representation for Multi-Label Image Recognition (SSGRL), ICCV 2019."),
    "openimages": ("cc-by-4.0", "Open Images: the annotations are CC BY 4.0, the images are listed as CC BY 2.0 "
                   "(https://storage.googleapis.com/openimages/web/factsfigures.html); check each image's own "
                   "licence.", "Kuznetsova et al., The Open Images Dataset V4, IJCV 2020."),
    "lvis": ("cc-by-4.0", "LVIS annotations: CC BY 4.0 (https://www.lvisdataset.org/); the images are COCO 2017's, "
             "Flickr photos under the Flickr terms of use.",
             "Gupta et al., LVIS: A Dataset for Large Vocabulary Instance Segmentation, CVPR 2019."),
    "nuswide": ("other", "NUS-WIDE: for research use (https://lms.comp.nus.edu.sg/wp-content/uploads/2019/research/"
                "nuswide/NUS-WIDE.html); the images are Flickr photos under the Flickr terms of use.",
                "Chua et al., NUS-WIDE: A Real-World Web Image Database from National University of Singapore, "
                "CIVR 2009."),
    "csv": ("other", "A lab's own data: see its owners' licence.", None),
    "unknown-format": ("other", "See the source.", None),
}
DIGITS = ("cc-by-4.0", "The digit scans are scikit-learn's copy of the UCI optical recognition of handwritten digits "
          "data (CC BY 4.0); the composed images and labels are made by mlrpl.", None)


def render(tmp_path: Path, fmt: str, name: str) -> str:
    """The card of a dataset folder holding only a dataset.json of this format and name."""
    folder = tmp_path / f"{name}-{fmt}"
    folder.mkdir()
    (folder / "dataset.json").write_text(json.dumps({
        "name": name, "version": "1", "schema_version": 1, "fingerprint": "0" * 64, "num_classes": 2, "counts": {"train": 3, "test": 1},
        "options": {"format": fmt}, "mlrpl_version": "0"}))
    return card_mod.dataset_card(DatasetFolder(folder))


def licence_and_citation(card: str) -> tuple[str, str, str | None]:
    lines = card.split("\n")
    licence = next(line for line in lines if line.startswith("license: "))[len("license: "):]
    text = lines[lines.index("## Licence") + 2]
    cites = [line[len("- The dataset: "):] for line in lines if line.startswith("- The dataset: ")]
    assert len(cites) <= 1
    return licence, text, cites[0] if cites else None


def test_every_format_a_builder_writes_is_registered_and_pinned():
    assert set(FORMATS) == set(PINNED) - {"unknown-format"}


@pytest.mark.parametrize("fmt", sorted(PINNED))
def test_the_card_gives_each_format_its_builders_licence_and_citation(tmp_path, fmt):
    assert tuple(source_terms(fmt, "somedata")) == PINNED[fmt]
    assert licence_and_citation(render(tmp_path, fmt, "somedata")) == PINNED[fmt]


def test_the_embedded_digits_have_their_own_terms_whatever_their_format(tmp_path):
    assert tuple(source_terms("coco", "digits")) == DIGITS
    assert licence_and_citation(render(tmp_path, "coco", "digits-b")) == DIGITS
