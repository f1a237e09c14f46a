"""mlrpl_data: raw COCO / VOC07 / VG files -> versioned manifests, partial-label masks, shards.

The public names, imported on first use (so `import mlrpl_data` stays light)::

    from mlrpl_data import build_coco, CocoConfig, write_manifest, make_masks, MaskConfig, write_shards, ShardConfig
    m = build_coco(CocoConfig(root="/data/raw/coco2014"))      # a Manifest
    write_manifest(m, "/data/mlrpl/coco2014")
    make_masks("/data/mlrpl/coco2014", MaskConfig(proportions=[0.3]))
    write_shards("/data/mlrpl/coco2014", ShardConfig())
    verify("/data/mlrpl/coco2014")                             # [] when every check passes
"""

__version__ = "0.2.0"

from .lazy import lazy_exports

_PUBLIC = {
    "CocoConfig": "coco", "build_coco": "coco",
    "VocConfig": "voc", "build_voc07": "voc",
    "VgConfig": "vg", "build_vg200": "vg", "SsgrlConfig": "vg", "build_vg200_ssgrl": "vg",
    "DigitsConfig": "digits", "write_digits": "digits",
    "OpenImagesConfig": "openimages", "build_openimages": "openimages", "LvisConfig": "lvis", "build_lvis": "lvis",
    "NuswideConfig": "nuswide", "build_nuswide": "nuswide", "CsvConfig": "csvlabels", "build_csv": "csvlabels",
    "Manifest": "manifest", "read_manifest": "folder", "write_manifest": "folder",
    "DatasetFolder": "folder", "list_masks": "folder",
    "MaskConfig": "masks", "make_masks": "masks", "read_mask": "masks",
    "ShardConfig": "shards", "write_shards": "shards", "read_index": "shards",
    "embed_labels": "embeddings",
    "verify": "verify",
    "PullConfig": "pull", "pull": "pull",
    "MlrplError": "errors", "BadInputError": "errors",
}
__all__ = sorted(_PUBLIC)
__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC, globals())
