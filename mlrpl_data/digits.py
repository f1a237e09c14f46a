"""The embedded default dataset: real handwritten digit scans composed into multi-label images.

scikit-learn ships 1,797 real 8x8 digit scans (UCI optdigits). Each image places 1 to
`max_digits` of them, upscaled, on a `grid` x `grid` layout at random cells; its labels are
the digits it shows. Train and test draw from disjoint parts of the scans (`train_scans` of
them for train), so the test set holds unseen handwriting. The defaults are the demo's data
(128 px, 4x4, 1-4 digits, half the scans each); other settings make other datasets of the
same kind, e.g. a held-out one to check a method on data it was not tuned on. Written in the
raw COCO format (instances JSON with boxes + JPEG folders) so it goes through `build-coco`
like real data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .fsutil import atomic_write_text
from .options import check_ranges, opt
from .ownership import releasing
from .declare import SourceTerms

# the source's licence and citation, for the dataset card (formats.source_terms)
TERMS = {"digits": SourceTerms(
    "cc-by-4.0", "The digit scans are scikit-learn's copy of the UCI optical recognition of handwritten digits "
    "data (CC BY 4.0); the composed images and labels are made by mlrpl.")}  # no citation line: mlrpl's own

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
YEAR = "2014"


@dataclass
class DigitsConfig:
    out: Path = field(metadata=opt("Folder for the raw COCO-format digits data"))
    train_images: int = field(default=2000, metadata=opt("Training images to compose", min=1))
    test_images: int = field(default=500, metadata=opt("Test images to compose", min=1))
    image_size: int = field(default=128, metadata=opt("Side of each square image, in pixels", min=8))
    grid: int = field(default=4, metadata=opt("Digits sit in the cells of a GRID x GRID layout", min=1))
    max_digits: int = field(default=4, metadata=opt("Each image shows 1 to this many digits", min=1))
    seed: int = field(default=0, metadata=opt("Seed of the layouts and of the split of the scans", min=0))
    train_scans: float = field(default=0.5, metadata=opt(
        "Fraction of the 1,797 scans that train images use (test images use the others)", min=0, min_open=True,
        max=0.99))

    def __post_init__(self) -> None:
        from .errors import BadInputError

        check_ranges(self)
        if self.image_size < self.grid:
            raise BadInputError(f"--image-size {self.image_size} must be at least --grid {self.grid}")
        if self.max_digits > self.grid * self.grid:
            raise BadInputError(f"--max-digits {self.max_digits}: at most grid^2 = {self.grid ** 2}")


def _digit_tiles(cell: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    # 0..16 ink -> dark ink on white paper, upscaled with bicubic smoothing
    tiles = np.stack(
        [
            np.asarray(Image.fromarray((255 - img * 255 / 16).astype(np.uint8)).resize((cell, cell), Image.BICUBIC))
            for img in d.images
        ]
    )
    return tiles, d.target.astype(int)


def _compose(rng, tiles, targets, pool, cfg: DigitsConfig):
    cell = cfg.image_size // cfg.grid
    canvas = np.full((cfg.image_size, cfg.image_size), 255, dtype=np.uint8)
    k = int(rng.integers(1, cfg.max_digits + 1))
    cells = rng.choice(cfg.grid * cfg.grid, size=k, replace=False)
    anns = []
    for c in cells:
        t = int(rng.choice(pool))
        y, x = divmod(int(c), cfg.grid)
        canvas[y * cell:(y + 1) * cell, x * cell:(x + 1) * cell] = tiles[t]
        anns.append((int(targets[t]), [x * cell, y * cell, cell, cell]))
    noise = rng.normal(0, 6, canvas.shape)
    img = np.clip(canvas + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(img).convert("RGB"), anns


@releasing
def write_digits(cfg: DigitsConfig) -> Path:
    """Write ROOT/annotations/instances_{train,val}2014.json and ROOT/{train,val}2014/*.jpg, into a
    new or empty folder (or one this wrote before: it is rewritten), never into someone's data."""
    from .ownership import claim

    out = Path(cfg.out)
    claim(out, "digits", "--out")
    rng = np.random.default_rng(cfg.seed)
    tiles, targets = _digit_tiles(cfg.image_size // cfg.grid)
    order = rng.permutation(len(targets))
    cut = int(round(len(order) * cfg.train_scans))
    pools = {"train": order[:cut], "val": order[cut:]}
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": n, "supercategory": "digit"} for i, n in enumerate(DIGIT_NAMES)]
    ann_id = 1
    for split, count in (("train", cfg.train_images), ("val", cfg.test_images)):
        folder = out / f"{split}{YEAR}"
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for n in range(count):
            image_id = n + 1 if split == "train" else 100000 + n + 1
            img, anns = _compose(rng, tiles, targets, pools[split], cfg)
            file_name = f"{image_id:012d}.jpg"
            img.save(folder / file_name, quality=90)
            images.append({"id": image_id, "file_name": file_name, "width": cfg.image_size, "height": cfg.image_size})
            for digit, box in anns:
                annotations.append({"id": ann_id, "image_id": image_id, "category_id": digit + 1, "bbox": box,
                                    "area": box[2] * box[3], "iscrowd": 0})
                ann_id += 1
        doc = {"info": {"description": "mlrpl demo: scikit-learn digits composed into multi-label images"},
               "images": images, "annotations": annotations, "categories": categories}
        atomic_write_text(out / "annotations" / f"instances_{split}{YEAR}.json", json.dumps(doc))
    return out
