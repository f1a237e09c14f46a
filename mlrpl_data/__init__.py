"""mlrpl_data: raw COCO / VOC07 / VG files -> versioned manifests, partial-label masks, shards."""

__version__ = "0.1.0"
