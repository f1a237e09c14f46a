"""mlrpl_train: stream the shards, train DSRB / SSGRL / partial BCE, evaluate, predict, export.

The public names, imported on first use::

    from mlrpl_train import dataloader, load_predictor
    loader = dataloader("/data/mlrpl/coco2014", mask="uniform-p0.30-s0")   # batches of keys, images, labels, partial
    model = load_predictor("runs/coco-dsrb-p0.3")                          # a run, checkpoint or export
    probabilities = model.predict(["street.jpg"])                          # (N, C), model.class_names
"""

from mlrpl_data.lazy import lazy_exports

_PUBLIC = {
    "TrainConfig": "options", "train": "engine", "evaluate_checkpoint": "reports", "load_checkpoint": "checkpoint",
    "dataloader": "data", "resolve_data": "data",
    "Predictor": "inference", "load_predictor": "inference", "export_run": "inference",
    "run_sweep": "sweep", "write_table": "sweep",
}
__all__ = sorted(_PUBLIC)
__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC, globals())
