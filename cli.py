"""`mlrpl`: the command line. Thin: parse, call one library function, print."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Optional, Tuple

import typer

from mlrpl_data.errors import MlrplError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Multi-label recognition with partial labels: datasets, masks, shards, DSRB.")


def friendly(fn):
    """Turn the project's errors into one line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MlrplError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1)

    return wrapper


def _report_build(m, out: Path, force: bool) -> None:
    from mlrpl_data.manifest import write_manifest

    state = write_manifest(m, out, force=force)
    counts = ", ".join(f"{k} {v:,}" for k, v in m.counts().items())
    missing = m.extra.get("missing") or []
    typer.echo(f"{out}: {m.name} {m.version}, {m.num_classes} classes, {counts}; fingerprint {m.fingerprint[:16]} ({state})")
    if missing:
        typer.echo(f"dropped {len(missing):,} missing image(s) (listed in {out}/dataset.json)")


@app.command("demo-data")
@friendly
def demo_data(out: Path = typer.Option(..., help="Folder for the raw COCO-format digits data"),
              train_images: int = typer.Option(2000, help="Training images to compose"),
              test_images: int = typer.Option(500, help="Test images to compose"),
              seed: int = typer.Option(0, help="Seed of the layout and of the split of the scans"),
              image_size: int = typer.Option(128, help="Side of each square image, in pixels"),
              grid: int = typer.Option(4, help="Digits sit in the cells of a GRID x GRID layout"),
              max_digits: int = typer.Option(4, help="Each image shows 1 to this many digits"),
              train_scans: float = typer.Option(0.5, help="Fraction of the 1,797 scans that train images use "
                                                          "(test images use the others)")):
    """Write the embedded default dataset (scikit-learn digit scans, COCO format), or another of its kind."""
    from mlrpl_data.digits import DigitsConfig, write_digits

    write_digits(DigitsConfig(out=out, train_images=train_images, test_images=test_images, seed=seed,
                              image_size=image_size, grid=grid, max_digits=max_digits, train_scans=train_scans))
    typer.echo(f"{out}: annotations/instances_{{train,val}}2014.json, train2014/, val2014/")


@app.command("build-coco")
@friendly
def build_coco(root: Path = typer.Option(..., help="Holds annotations/instances_{train,val}YEAR.json and {train,val}YEAR/"),
               out: Path = typer.Option(..., help="Dataset folder to write"),
               year: str = "2014",
               splits: str = typer.Option("train,val", help="Source splits to read"),
               name: Optional[str] = typer.Option(None, help="Key prefix (default coco<year>)"),
               exclude_crowd: bool = typer.Option(False, help="Ignore iscrowd=1 annotations"),
               allow_missing: bool = typer.Option(False, help="Drop images missing on disk (recorded)"),
               subset: bool = typer.Option(False, help="The files are a deliberate subset: skip the count check"),
               force: bool = False):
    """Build a manifest from COCO instances JSON files."""
    from mlrpl_data.coco import CocoConfig, build_coco as build

    m = build(CocoConfig(root=root, year=year, splits=tuple(s.strip() for s in splits.split(",")), name=name,
                         include_crowd=not exclude_crowd, allow_missing=allow_missing, subset=subset))
    _report_build(m, out, force)


@app.command("build-voc07")
@friendly
def build_voc07(root: Path = typer.Option(..., help="VOCdevkit/VOC2007, or a folder holding it"),
                out: Path = typer.Option(...),
                difficult: str = typer.Option("negative", help="negative (as published) or ignore"),
                allow_missing: bool = False, subset: bool = False, force: bool = False):
    """Build a manifest from the PASCAL VOC 2007 devkit tree."""
    from mlrpl_data.voc import VocConfig, build_voc07 as build

    _report_build(build(VocConfig(root=root, difficult=difficult, allow_missing=allow_missing, subset=subset)), out, force)


@app.command("build-vg200")
@friendly
def build_vg200(root: Path = typer.Option(..., help="Holds objects.json, image_data.json, VG_100K/, VG_100K_2/"),
                out: Path = typer.Option(...),
                test_size: int = 10000, seed: int = 0, num_classes: int = 200,
                aliases: Optional[Path] = typer.Option(None, help="object_alias.txt (default ROOT/object_alias.txt)"),
                vocabulary: Optional[Path] = typer.Option(None, help="JSON list of class names to use instead of ranking"),
                ssgrl_lists: Optional[Tuple[Path, Path]] = typer.Option(None, help="TRAIN TEST: SSGRL's train_list_500.txt test_list_500.txt"),
                ssgrl_labels: Optional[Path] = typer.Option(None, help="SSGRL's vg_category_500_labels_index.json"),
                allow_missing: bool = False, force: bool = False):
    """Build VG-200 from the raw release, or the papers' benchmark split with --ssgrl-lists."""
    from mlrpl_data import vg

    if ssgrl_lists or ssgrl_labels:
        if not (ssgrl_lists and ssgrl_labels):
            raise MlrplError("--ssgrl-lists TRAIN TEST and --ssgrl-labels JSON go together")
        m = vg.build_vg200_ssgrl(vg.SsgrlConfig(root=root, train_list=ssgrl_lists[0], test_list=ssgrl_lists[1],
                                                labels=ssgrl_labels, num_classes=num_classes, allow_missing=allow_missing))
    else:
        m = vg.build_vg200(vg.VgConfig(root=root, num_classes=num_classes, test_size=test_size, seed=seed,
                                       aliases=aliases, vocabulary=vocabulary, allow_missing=allow_missing))
    _report_build(m, out, force)


@app.command()
@friendly
def stats(dataset: str = typer.Argument(..., help="Dataset folder or URL"), as_json: bool = typer.Option(False, "--json")):
    """Images per split, positives per class, labels per image."""
    from mlrpl_data.manifest import read_manifest
    from mlrpl_data.stats import dataset_stats, format_stats

    s = dataset_stats(read_manifest(dataset))
    typer.echo(json.dumps(s, indent=2) if as_json else format_stats(s))


@app.command("make-masks")
@friendly
def make_masks(dataset: Path = typer.Argument(..., help="Dataset folder"),
               proportion: str = typer.Option("0.3", help="Known proportion(s): 0.3, 0.1,0.5,0.9 or 0.1:0.9:0.1"),
               seed: int = 0,
               scheme: str = typer.Option("uniform", help="uniform | hcp | per-image | single-positive"),
               split: str = typer.Option("train", help="train | test | all"),
               force: bool = False):
    """Write seeded partial-label masks: DIR/masks/<scheme>-p0.30-s0.parquet (+ .json)."""
    from mlrpl_data.masks import MaskConfig, format_mask_stats, make_masks as make, parse_proportions

    proportions = parse_proportions(proportion) if scheme != "single-positive" else []
    results = make(dataset, MaskConfig(proportions=proportions, seed=seed, scheme=scheme, split=split, force=force))
    typer.echo(format_mask_stats([mask.meta for mask, _ in results]))
    for mask, state in results:
        missing = mask.meta["stats"]["classes_without_known_positive"]
        if missing:
            typer.echo(f"warning: {mask.name}: {len(missing)} class(es) have no known positive "
                       f"(DSRB prototypes need one): {', '.join(missing[:10])}", err=True)
    typer.echo(", ".join(f"{mask.name} {state}" for mask, state in results))


@app.command()
@friendly
def masks(dataset: Path = typer.Argument(..., help="Dataset folder")):
    """List the masks of a dataset with their stats (checked against the manifest)."""
    from mlrpl_data.manifest import read_card
    from mlrpl_data.masks import format_mask_stats, list_masks, read_mask

    fp = read_card(dataset)["fingerprint"]
    metas = []
    for meta in list_masks(dataset):
        read_mask(dataset, meta["name"], fingerprint=fp)  # refuses stale or altered masks
        metas.append(meta)
    typer.echo(format_mask_stats(metas) if metas else f"{dataset}: no masks yet (mlrpl make-masks {dataset} --proportion 0.3)")


@app.command("write-shards")
@friendly
def write_shards(dataset: Path = typer.Argument(..., help="Dataset folder"),
                 split: str = typer.Option("all", help="train | test | all"),
                 shard_size: str = typer.Option("512MB", help="Target shard size (planned from the source file sizes)"),
                 max_samples: Optional[int] = typer.Option(None, help="Samples per shard instead of --shard-size"),
                 workers: int = typer.Option(1, help="Processes writing shards in parallel (same bytes for any number)"),
                 resize: Optional[int] = typer.Option(None, help="Re-encode as JPEG with the shorter side shrunk to this"),
                 on_bad_image: str = typer.Option("fail", help="fail | skip (skipped images are listed in index.json)"),
                 part: Optional[str] = typer.Option(None, help="i/n: write only part i of n (e.g. a Slurm array task)"),
                 no_progress: bool = False):
    """Write deterministic, checksummed WebDataset shards: DIR/shards/<split>-000000.tar ..."""
    from mlrpl_data.shards import ShardConfig, parse_part, parse_size, write_shards as write

    cfg = ShardConfig(split=split, shard_size=None if max_samples else parse_size(shard_size), max_samples=max_samples,
                      workers=workers, resize=resize, on_bad_image=on_bad_image, part=parse_part(part),
                      progress=not no_progress)
    r = write(dataset, cfg)
    typer.echo(f"{dataset}/shards: {len(r.written)} written, {len(r.kept)} kept (already complete)")
    if r.complete:
        skipped = r.index["skipped"]
        typer.echo(f"index.json and SHA256SUMS: {len(r.index['shards'])} shards, {r.index['splits']}"
                   + (f"; {len(skipped)} bad image(s) skipped (listed in index.json)" if skipped else ""))
    else:
        typer.echo("not all shards exist yet (other --part runs?): index.json is written when the last one is done; "
                   "re-run without --part to finish")


@app.command()
@friendly
def verify(dataset: str = typer.Argument(..., help="Dataset folder or URL (http(s)://, s3://, ...)")):
    """Check every shard's sha256, sample count and keys against the index and the manifest."""
    from mlrpl_data.shards import verify as check

    problems = check(dataset)
    for p in problems:
        typer.echo(f"problem: {p}", err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{dataset}: all shards match the index and the manifest")


@app.command()
@friendly
def train(method: str = typer.Argument(..., help="pbce (partial BCE baseline) | ssgrl | dsrb"),
          dataset: str = typer.Argument(..., help="Dataset folder or URL with shards/ and masks/"),
          masks: str = typer.Option(None, help="Mask name, e.g. uniform-p0.30-s0"),
          backbone: str = typer.Option("resnet101", help="resnet18|34|50|101|152 or tiny"),
          weights: str = typer.Option("imagenet", help="imagenet (local torch cache) | PATH | none"),
          freeze: str = typer.Option("auto", help="Freeze conv1..this (BatchNorm in eval): auto|none|layer1..layer4; "
                                                 "auto = layer3 with pretrained weights, none with --weights none"),
          epochs: int = 20, batch_size: int = 32, lr: float = 1e-5,
          lr_step: int = typer.Option(10, help="Divide the learning rate by 10 every this many epochs"),
          weight_decay: float = 5e-4, image_size: int = 448,
          crop_scales: str = typer.Option("512,448,384,320,256", help="Square crop sizes of the 512x512 resize"),
          workers: int = typer.Option(None, help="Loader processes per GPU (default: min(4, CPU cores))"),
          seed: int = 0,
          out: Path = typer.Option(Path("runs/run"), help="Run directory"),
          resume: Optional[Path] = typer.Option(None, help="Continue the run in this directory (its config is used)"),
          force: bool = typer.Option(False, help="Replace an existing run in --out"),
          checkpoint_every: int = typer.Option(0, help="Also checkpoint every N steps"),
          on_bad_sample: str = typer.Option("skip", help="skip (counted) | fail"),
          device: str = typer.Option("auto", help="auto | cpu | cuda"),
          nproc: int = typer.Option(1, help="GPUs/processes: >1 launches torchrun itself"),
          no_progress: bool = False,
          no_iprb: bool = typer.Option(False, help="DSRB without IPRB (Table 2)"),
          no_pprb: bool = typer.Option(False, help="DSRB without PPRB (Table 2)"),
          fixed_alpha: bool = typer.Option(False, help="Keep alpha at 0.5 (Table 2)"),
          fixed_beta: bool = typer.Option(False, help="Keep beta at 0.5 (Table 2)"),
          blend: str = typer.Option("map", help="map (DSRB) | vector (the 'w/ RV' rows)"),
          csrl: str = typer.Option("sd", help="sd (semantic decoupling) | sa (semantic attention)"),
          grid_k: int = typer.Option(1, help="Prototypes on a 2^K x 2^K grid"),
          blend_start: int = typer.Option(5, help="Epoch from which IPRB/PPRB blend"),
          prototype_every: int = typer.Option(5, help="Recompute prototypes every N epochs"),
          contrastive_weight: float = typer.Option(0.05, help="lambda of eq. 16"),
          contrastive: str = typer.Option("published", help="published (the authors' loss: known pairs, subsampled, "
                                                            "mean, ramped in over epoch 1) | literal (eq. 3-4 summed)"),
          bce: str = typer.Option("batch", help="batch (one mean over the batch's known labels, the authors') | "
                                                "per-image (eq. 14-15)"),
          feat_dim: int = typer.Option(1024, help="DSRB/SSGRL feature size after the 1x1 conv (paper: 1024)"),
          attn_dim: int = typer.Option(512, help="Width of the semantic-decoupling attention (authors' code: 512)"),
          embeddings: Optional[str] = typer.Option(None, help="Label embeddings .npy (default DIR/label_embeddings.npy, else learned)")):
    """Train a model on a dataset's shards and a mask (one GPU, CPU, or many with --nproc)."""
    from mlrpl_train.engine import load_run_config, train as run_training

    if nproc > 1 and "WORLD_SIZE" not in __import__("os").environ:
        import subprocess

        argv = [a for a in sys.argv[1:]]
        i = argv.index("--nproc")
        del argv[i:i + 2]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "cli", *argv]
        raise typer.Exit(subprocess.call(cmd))
    if resume:
        cfg = load_run_config(resume)
        cfg.out, cfg.progress = str(resume), not no_progress
    else:
        if not masks:
            raise MlrplError("--masks NAME is required (see `mlrpl masks DIR`)")
        cfg = _train_config(locals())
    run = run_training(cfg, resume=resume is not None, force=force)
    typer.echo(f"{run}: config.json, metrics.csv, tb/, last.pt, best.pt")


def _train_config(o: dict):
    """A TrainConfig from the options `train` and `sweep` share."""
    from mlrpl_train.engine import TrainConfig

    model = {"iprb": not o["no_iprb"], "pprb": not o["no_pprb"], "learn_alpha": not o["fixed_alpha"],
             "learn_beta": not o["fixed_beta"], "blend": o["blend"], "csrl": o["csrl"], "grid_k": o["grid_k"],
             "blend_start": o["blend_start"], "prototype_every": o["prototype_every"],
             "contrastive_weight": o["contrastive_weight"], "contrastive": o["contrastive"], "embeddings": o["embeddings"],
             "feat_dim": o["feat_dim"], "attn_dim": o["attn_dim"]}
    extra = {"workers": o["workers"]} if o["workers"] is not None else {}
    return TrainConfig(method=o["method"], dataset=o["dataset"], masks=o.get("masks") or "", out=str(o["out"]),
                       backbone=o["backbone"], weights=o["weights"], freeze=o["freeze"], epochs=o["epochs"],
                       batch_size=o["batch_size"], lr=o["lr"], lr_step=o["lr_step"], weight_decay=o["weight_decay"],
                       image_size=o["image_size"], seed=o.get("seed", 0), bce=o["bce"], **extra,
                       crop_scales=tuple(int(c) for c in o["crop_scales"].split(",")),
                       checkpoint_every=o.get("checkpoint_every", 0), on_bad_sample=o.get("on_bad_sample", "skip"),
                       device=o.get("device", "auto"), progress=not o["no_progress"],
                       model=model if o["method"] != "pbce" else {})


@app.command()
@friendly
def sweep(method: str = typer.Argument(..., help="pbce | ssgrl | dsrb"),
          dataset: str = typer.Argument(..., help="Dataset folder with shards/"),
          proportions: str = typer.Option("0.1:0.9:0.1", help="Known proportions: 0.1,0.5,0.9 or 0.1:0.9:0.1"),
          seeds: str = typer.Option("0", help="Seeds (mask and training), e.g. 0,1,2"),
          scheme: str = typer.Option("uniform", help="Mask scheme"),
          out: Path = typer.Option(Path("runs/sweep"), help="Sweep folder: one run per (proportion, seed), the table"),
          backbone: str = "resnet101", weights: str = "imagenet", freeze: str = "auto",
          epochs: int = 20, batch_size: int = 32, lr: float = 1e-5, lr_step: int = 10, weight_decay: float = 5e-4,
          image_size: int = 448, crop_scales: str = "512,448,384,320,256", workers: Optional[int] = None,
          no_iprb: bool = False, no_pprb: bool = False, fixed_alpha: bool = False, fixed_beta: bool = False,
          blend: str = "map", csrl: str = "sd", grid_k: int = 1, blend_start: int = 5, prototype_every: int = 5,
          contrastive_weight: float = 0.05, contrastive: str = "published", bce: str = "batch",
          feat_dim: int = 1024, attn_dim: int = 512, embeddings: Optional[str] = None,
          no_progress: bool = False):
    """Train one run per proportion (and seed), then write Table 1 (Markdown, CSV) and a mAP plot."""
    from mlrpl_data.masks import parse_proportions
    from mlrpl_train.sweep import run_sweep, write_table

    base = _train_config(locals())
    run_sweep(base, parse_proportions(proportions), [int(s) for s in seeds.split(",")], out, scheme)
    from mlrpl_data.manifest import read_card

    t = write_table(out, title=f"{read_card(dataset)['name']}: final-epoch test metrics ({scheme} masks)")
    typer.echo(t["markdown"])
    typer.echo(f"{out}: table.md, table.csv, map_vs_proportion.png")


@app.command("embed-labels")
@friendly
def embed_labels(dataset: Path = typer.Argument(..., help="Dataset folder"),
                 source: Optional[Path] = typer.Option(None, "--from", help="glove.txt (word v1 v2 ...) or vectors.npy (C, E)")):
    """Store DIR/label_embeddings.npy (+ .json provenance) for CSRL's semantic decoupling."""
    from mlrpl_data.embeddings import embed_labels as embed

    meta = embed(dataset, source)
    typer.echo(f"{dataset}/label_embeddings.npy: {meta['shape'][0]} x {meta['shape'][1]} ({meta['method']})")


@app.command()
@friendly
def evaluate(run_or_checkpoint: Path = typer.Argument(..., help="A run directory (its best.pt) or a checkpoint file"),
             dataset: str = typer.Argument(..., help="Dataset folder or URL (its test shards)"),
             out: Optional[Path] = typer.Option(None, help="Where to write the reports (default: beside the checkpoint)"),
             workers: int = 2):
    """Metrics table, per-class AP as JSON and as a bar chart PNG."""
    from mlrpl_train.engine import evaluate_checkpoint
    from mlrpl_train.metrics import format_metrics

    m = evaluate_checkpoint(run_or_checkpoint, dataset, out, workers)
    typer.echo(format_metrics(m))
    typer.echo(f"{m['report_dir']}: eval_metrics.json, per_class_ap.json, per_class_ap.png")


@app.command()
@friendly
def demo(out: Path = typer.Option(Path("mlrpl-demo"), help="Working folder for the demo"),
         epochs: int = typer.Option(12, help="Training epochs of each method"),
         force: bool = typer.Option(False, help="Rebuild the raw data from scratch")):
    """The main job on the embedded data: raw digits -> manifest -> 10% masks -> shards -> partial BCE and DSRB -> evaluate both."""
    from mlrpl_train.demo import format_comparison, run_demo

    results = run_demo(out, epochs=epochs, force=force, say=typer.echo)
    typer.echo(format_comparison(results))
    typer.echo(f"chance mAP (the positive rate) is about {100 * results['chance_map']:.1f}; "
               f"reports in {out}/run-pbce and {out}/run-dsrb")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
