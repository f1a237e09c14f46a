"""`mlrpl`: the command line. Thin: parse, call one library function, print.

Options come from the typed dataclasses of the library (`with_options`): each is declared once,
with its default, help and range, next to the code that uses it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import shlex
import sys
import typing
from pathlib import Path
from typing import Any, Optional, Tuple

import typer
from typer.core import TyperCommand

from mlrpl_data import __version__
from mlrpl_data.declare import BuildCommand
from mlrpl_data.digits import DigitsConfig
from mlrpl_data import errors
from mlrpl_data.errors import Interrupted, MlrplError, raise_on_sigterm
from mlrpl_data.formats import BUILDERS
from mlrpl_data.masks import MaskConfig, Scheme
from mlrpl_data.options import choices
from mlrpl_data.pull import PullConfig
from mlrpl_data.shards import ShardConfig, ShardSplit
from mlrpl_data.vg import VgConfig
from mlrpl_train.metrics import get_metric, per_epoch_metrics
from mlrpl_train.options import Method, TrainConfig
from mlrpl_train.registry import help_list, method_names

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Multi-label recognition with partial labels: datasets, masks, shards, DSRB.")


# ---- --help in click's words -------------------------------------------------------------------------------------

def range_text(lo: float | None, hi: float | None, lo_open: bool = False) -> str | None:
    """A range as click's IntRange/FloatRange show it: x>=1, 1<=x<=100, x>0, 0<x<=1; None when unbounded."""
    if lo is None and hi is None:
        return None
    left = "" if lo is None else f"{lo}{'<' if lo_open else '<='}"
    return f"{left}x<={hi}" if hi is not None else f"x{'>' if lo_open else '>='}{lo}"


def click_metavar(p: Any, ranged: bool) -> str | None:
    """An option's value as click writes it: INTEGER, FLOAT RANGE, TEXT, PATH, <PATH PATH>, [a|b|c];
    None for a flag (typer 0.29 writes <int range>, <str>, <a|b|c>)."""
    if getattr(p, "is_flag", False):
        return None
    d = p.type_descriptor
    if d.is_choice:
        return "[" + "|".join(str(getattr(c, "value", c)) for c in d.choices) + "]"
    args = typing.get_args(d.annotation)
    if d.is_tuple:
        return "<" + " ".join(_click_type_name(a) for a in args) + ">"
    name = _click_type_name(args[0] if d.is_list else d.annotation)
    return f"{name} RANGE" if ranged and name in ("INTEGER", "FLOAT") else name


def _click_type_name(tp: Any) -> str:
    return {int: "INTEGER", float: "FLOAT", bool: "BOOLEAN", Path: "PATH"}.get(tp, "TEXT")


class ClickHelp(TyperCommand):
    """A command whose --help reads as click's: `Usage: mlrpl train [OPTIONS] METHOD DATASET`, each value
    as INTEGER RANGE or [a|b|c], and every range in the brackets, `[default: 20; x>=1]`: those typer checks
    (typer.Option min/max) and those the library checks (an option dataclass field's opt(min=, max=),
    shown here only so that the library's one-line error stays the one a user meets)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if p.param_type_name == "argument":
                name = _argument_name(p)
                pieces.append((name if p.required else f"[{name}]") + ("..." if p.nargs != 1 else ""))
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        shown = _declared_ranges(self.callback)
        args, opts = [], []
        for p in self.get_params(ctx):
            record = p.get_help_record(ctx) if p.param_type_name == "argument" else None
            if p.param_type_name == "argument" and record:
                choices = click_metavar(p, False) if p.type_descriptor.is_choice else ""
                args.append((f"{_argument_name(p)}{'...' if p.nargs != 1 else ''} {choices}".strip(), record[1]))
            elif p.param_type_name == "option":
                declared = shown.get(p.name)
                if p.metavar is None:
                    p.metavar = click_metavar(p, declared is not None or p.min is not None or p.max is not None)
                record = p.get_help_record(ctx)
                if record:
                    opts.append((record[0], _with_range(record[1], declared)))
        if args:
            with formatter.section("Arguments"):
                formatter.write_dl(args)
        if opts:
            with formatter.section("Options"):
                formatter.write_dl(opts)


def _argument_name(p: Any) -> str:
    return p.metavar or p.name.upper()


def _declared_ranges(callback: Any) -> dict[str, str]:
    """{option name: range text} that `with_options` recorded on the command's function (found through
    the wrappers' __wrapped__)."""
    while callback is not None:
        if hasattr(callback, "declared_ranges"):
            return callback.declared_ranges
        callback = getattr(callback, "__wrapped__", None)
    return {}


def _with_range(help: str, declared: str | None) -> str:
    """The help text with a declared range in its trailing [default: ...; required] brackets, where click puts it."""
    if not declared:
        return help
    if help.endswith("]") and "  [" in help:
        text, extras = help.rsplit("  [", 1)
        parts = extras[:-1].split("; ")
        at = len(parts) - (parts[-1] == "required")
        return f"{text}  [{'; '.join(parts[:at] + [declared] + parts[at:])}]"
    return f"{help}  [{declared}]" if help else f"[{declared}]"


# ---- plumbing: errors, options built from dataclasses ----------------------------------------------------------

def one_line(e: BaseException) -> str:
    """The message of an expected failure, on one line (a DataLoader worker re-raises an error with the
    worker's traceback inside its message: only the original message is kept)."""
    text = str(e).strip()
    if "Original Traceback" in text:
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].replace(".", "").replace("_", "").isalnum() else last
    return text.splitlines()[0] if text else type(e).__name__


def explain(e: BaseException) -> str | None:
    """One line for a failure a user can meet and fix; None for a bug."""
    import errno

    if isinstance(e, MlrplError):
        return one_line(e)
    if isinstance(e, OSError):
        where = f" ({e.filename})" if e.filename else ""
        if e.errno == errno.ENOSPC:
            return f"no space left on the device{where}: free some space or write elsewhere, then re-run (finished work is kept)"
        if e.errno in (errno.EACCES, errno.EPERM):
            return f"permission denied{where}"
        if e.errno == errno.ENOENT:
            return f"not found{where}"
        return f"{e.strerror or one_line(e)}{where}"
    name, module = type(e).__name__, type(e).__module__
    if isinstance(e, json.JSONDecodeError):
        return f"malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}"
    if module.startswith("pyarrow"):
        return f"unreadable Parquet/Arrow data: {one_line(e)}"
    if "Credentials" in name or module.startswith(("botocore", "aiobotocore", "s3fs")):
        return f"remote storage refused access ({name}: {one_line(e)}): check the credentials (e.g. AWS_* variables)"
    if "CUDA" in str(e) or "cuda" in name.lower():
        return f"CUDA: {one_line(e)}"
    if "closed by peer" in str(e) or "Connection reset by peer" in str(e):  # gloo / NCCL: another rank is gone
        return "another training process (rank) stopped first, so this one cannot go on: its own message says why"
    if "DataLoader worker" in str(e):
        return f"a data loader worker failed: {one_line(e)} (fewer --workers, or more memory)"
    return None


def friendly(fn):
    """Every expected failure is one line on stderr and exit code 1; Ctrl-C and SIGTERM one line too,
    exit 128 + the signal (130, 143); anything else says it is unexpected, in one line too, unless
    MLRPL_DEBUG=1 asks for the traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt as e:
            interrupted(getattr(e, "signum", 2), getattr(e, "hint", ""))
        except Exception as e:
            if os.environ.get("MLRPL_DEBUG") == "1":
                raise
            if worker_terminated(e) or errors.pending():  # a consequence of the interrupt, not a failure
                interrupted(errors.pending() or 15, "")
            line = explain(e)
            if line is None:
                line = (f"unexpected {type(e).__name__}: {one_line(e)} "
                        f"(a bug; run with MLRPL_DEBUG=1 for the traceback and report it)")
            typer.echo(f"error: {line}", err=True)
            raise typer.Exit(1)

    return wrapper


def worker_terminated(e: BaseException) -> bool:
    """A loader worker got the job's SIGTERM (Slurm signals every process) before its main process did."""
    return "killed by signal: Terminated" in str(e)


def interrupted(signum: int, hint: str) -> None:
    import signal

    errors.quiet_exit()
    typer.echo(f"interrupted ({signal.Signals(signum).name}): finished work is kept, temporary files removed; "
               f"{hint or 're-run the same command to continue'}", err=True)
    raise typer.Exit(128 + signum)


def command(name: str, example: str):
    """An app command with one-line errors and an example line at the end of its --help."""

    def deco(fn):
        return app.command(name, epilog=f"Example: {example}", cls=ClickHelp)(friendly(fn))

    return deco


def _cli_fields(cls: type, exclude: set[str]):
    """(field, type) of every command-line option of `cls`, nested option dataclasses flattened."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _cli_fields(tp, exclude)
        elif f.metadata.get("cli", True) and f.name not in exclude:
            yield f, tp


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return ...  # required


def _param(f: dataclasses.Field, tp: Any, default: Any) -> inspect.Parameter:
    meta = f.metadata
    if meta.get("parse"):  # typed as text on the command line
        annotation = Optional[str] if default is None else str
        default = default if default in (None, ...) else meta["show"](default)
    else:
        annotation = tp
    decls = [meta["flags"]] if meta.get("flags") else []
    info = typer.Option(default, *decls, help=meta.get("help", ""))
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def _build(cls: type, values: dict[str, Any], explicit: dict[str, Any]) -> Any:
    """`cls` from parsed option values; fields that are not options come from the command's own
    arguments of the same name, else take their defaults."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = _build(hints[f.name], values, explicit)
        elif f.name in values:
            v = values[f.name]
            parse = f.metadata.get("parse")
            if parse and isinstance(v, str):
                from mlrpl_data.options import flag_name

                try:
                    v = parse(v)
                except MlrplError as e:
                    msg = str(e)
                    raise type(e)(msg if msg.startswith("--") else f"{flag_name(f)} {msg}") from None
            kwargs[f.name] = v
        elif f.name in explicit:
            kwargs[f.name] = explicit[f.name]
    return cls(**kwargs)


def with_options(cls: type, name: str = "cfg", exclude: tuple[str, ...] = (), defaults: dict[str, Any] | None = None,
                 adapt: Any = None):
    """Give the command one option per field of dataclass `cls`; the command receives the built
    dataclass as its argument `name`. `defaults` overrides a default for this command only; `adapt`
    maps the command's own arguments to the values the dataclass takes (e.g. a list of methods to its first)."""
    defaults = defaults or {}

    def deco(fn):
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name != name]
        own_names = {p.name for p in own}
        generated = []
        for f, tp in _cli_fields(cls, set(exclude) | own_names):
            generated.append(_param(f, tp, defaults.get(f.name, _default(f))))
        names = [p.name for p in own] + [p.name for p in generated]
        assert len(names) == len(set(names)), f"{fn.__name__}: an option name is declared twice"
        gen_names = {p.name for p in generated}

        @functools.wraps(fn)
        def wrapper(**kwargs):
            values = {k: kwargs.pop(k) for k in list(kwargs) if k in gen_names}
            return fn(**kwargs, **{name: _build(cls, values, adapt(kwargs) if adapt else kwargs)})

        params = own + generated
        wrapper.declared_ranges = {f.name: text for f, _ in _cli_fields(cls, set(exclude) | own_names)
                                   if (text := range_text(f.metadata.get("min"), f.metadata.get("max"),
                                                          f.metadata.get("min_open", False)))}
        wrapper.__signature__ = inspect.Signature(params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return deco


def given_options(ctx: typer.Context) -> set[str]:
    """The options the user typed (not defaults) in the running command."""
    typed = ("COMMANDLINE", "ENVIRONMENT")
    return {k for k in ctx.params if getattr(ctx.get_parameter_source(k), "name", "") in typed}


def echo_json(doc: Any) -> None:
    typer.echo(json.dumps(doc, indent=2, default=str))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mlrpl {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the mlrpl version and exit")) -> None:
    """Multi-label recognition with partial labels: datasets, masks, shards, DSRB."""


# ---- datasets ---------------------------------------------------------------------------------------------------------

def _report_build(m, out: Path, force: bool) -> None:
    from mlrpl_data.folder import write_manifest

    state = write_manifest(m, out, force=force)
    counts = ", ".join(f"{k} {v:,}" for k, v in m.counts().items())
    missing = m.extra.get("missing") or []
    typer.echo(f"{out}: {m.name} {m.version}, {m.num_classes} classes, {counts}; fingerprint {m.fingerprint[:16]} ({state})")
    if missing:
        typer.echo(f"dropped {len(missing):,} missing image(s) (listed in {out}/dataset.json)")
    for w in m.warnings():  # also kept in dataset.json, and shown by `mlrpl stats` and the card
        typer.echo(f"warning: {w}", err=True)


OUT = typer.Option(..., "--out", help="Dataset folder to write (one dataset version)")
FORCE_BUILD = typer.Option(False, help="Replace a folder that holds another dataset (its masks and shards go too)")


@command("demo-data", "mlrpl demo-data --out digits-raw --image-size 96 --grid 3")
@with_options(DigitsConfig)
def demo_data(cfg):
    """Write the embedded default dataset (scikit-learn digit scans, COCO format), or another of its kind."""
    from mlrpl_data.digits import write_digits

    write_digits(cfg)
    typer.echo(f"{cfg.out}: annotations/instances_{{train,val}}2014.json, train2014/, val2014/")


def _builder(spec: BuildCommand) -> None:
    """One build-* command (declared by its builder module): the builder's options, --out and --force,
    the manifest written and reported."""

    def run(out: Path = OUT, force: bool = FORCE_BUILD, cfg=None):
        from mlrpl_data.ownership import option_inputs, refuse_overlap

        refuse_overlap(out, option_inputs(cfg), "--out")  # before the build reads anything
        _report_build(spec.build(cfg), out, force)

    run.__doc__, run.__name__ = spec.doc, spec.build.__name__
    command(spec.name, spec.example)(with_options(spec.config)(run))


for _builder_module in BUILDERS:
    if _builder_module.COMMAND:
        _builder(_builder_module.COMMAND)


@command("build-vg200", "mlrpl build-vg200 --root /data/vg --out /data/mlrpl/vg200")
@with_options(VgConfig)
def build_vg200(out: Path = OUT, force: bool = FORCE_BUILD,
                ssgrl_lists: Optional[Tuple[Path, Path]] = typer.Option(
                    None, help="TRAIN TEST: SSGRL's train_list_500.txt test_list_500.txt (the papers' benchmark split)"),
                ssgrl_labels: Optional[Path] = typer.Option(
                    None, help="SSGRL's labels JSON: vg_category_200_labels_index.json (the papers' VG-200)"),
                ssgrl_classes: Optional[int] = typer.Option(
                    None, help="Classes the labels file indexes: 200, or 500 (vg_category_500_labels_index.json: "
                               "keep classes 0..199 of VG-500, not the published benchmark); default: read from the "
                               "file, refused when it is a VG-500 file or unclear"),
                cfg=None):
    """Build VG-200 from the raw release, or the papers' benchmark split with --ssgrl-lists."""
    from mlrpl_data import vg
    from mlrpl_data.ownership import option_inputs, refuse_overlap

    refuse_overlap(out, {**option_inputs(cfg), "--ssgrl-labels": ssgrl_labels,
                         **dict(zip(("--ssgrl-lists TRAIN", "--ssgrl-lists TEST"), ssgrl_lists or ()))}, "--out")
    if ssgrl_classes is not None and not ssgrl_labels:
        raise MlrplError("--ssgrl-classes says what --ssgrl-labels JSON indexes: pass it with --ssgrl-lists and "
                         "--ssgrl-labels")
    if ssgrl_lists or ssgrl_labels:
        if not (ssgrl_lists and ssgrl_labels):
            raise MlrplError("--ssgrl-lists TRAIN TEST and --ssgrl-labels JSON go together")
        m = vg.build_vg200_ssgrl(vg.SsgrlConfig(root=cfg.root, train_list=ssgrl_lists[0], test_list=ssgrl_lists[1],
                                                labels=ssgrl_labels, num_classes=cfg.num_classes,
                                                allow_missing=cfg.allow_missing, label_classes=ssgrl_classes))
    else:
        m = vg.build_vg200(cfg)
    _report_build(m, out, force)


@command("stats", "mlrpl stats /data/mlrpl/coco2014 --json")
def stats(dataset: str = typer.Argument(..., help="Dataset folder or URL"),
          as_json: bool = typer.Option(False, "--json/--no-json", help="Print JSON instead of a table")):
    """Images per split, positives per class, labels per image."""
    from mlrpl_data.folder import read_manifest
    from mlrpl_data.stats import dataset_stats, format_stats

    s = dataset_stats(read_manifest(dataset))
    echo_json(s) if as_json else typer.echo(format_stats(s))


# ---- masks and shards -------------------------------------------------------------------------------------------------------

DATASET_DIR = typer.Argument(..., help="Dataset folder")
JSON = typer.Option(False, "--json/--no-json", help="Print the result as JSON")


@command("make-masks", "mlrpl make-masks /data/mlrpl/coco2014 --proportion 0.1:0.9:0.1 --seed 0")
@with_options(MaskConfig)
def make_masks(ctx: typer.Context, dataset: Path = DATASET_DIR, as_json: bool = JSON, cfg=None):
    """Write seeded partial-label masks: DIR/masks/<scheme>-p0.30-s0.parquet (+ .json)."""
    from mlrpl_data.masks import format_mask_stats, make_masks as make

    refuse_single_positive_proportion(ctx, cfg)
    results = make(dataset, cfg)
    if as_json:
        return echo_json([{**mask.meta, "state": state} for mask, state in results])
    typer.echo(format_mask_stats([mask.meta for mask, _ in results]))
    for mask, state in results:
        missing = mask.meta["stats"]["classes_without_known_positive"]
        if missing:
            typer.echo(f"warning: {mask.name}: {len(missing)} class(es) have no known positive "
                       f"(DSRB prototypes need one): {', '.join(missing[:10])}", err=True)
    typer.echo(", ".join(f"{mask.name} {state}" for mask, state in results))


@command("masks", "mlrpl masks /data/mlrpl/coco2014")
def masks(dataset: Path = DATASET_DIR, as_json: bool = JSON):
    """List the masks of a dataset with their stats (checked against the manifest)."""
    from mlrpl_data.folder import DatasetFolder
    from mlrpl_data.masks import format_mask_stats, read_mask

    folder = DatasetFolder(dataset)
    fp = folder.card["fingerprint"]
    metas = []
    for meta in folder.mask_sidecars():
        read_mask(folder, meta["name"], fingerprint=fp)  # refuses stale or altered masks
        metas.append(meta)
    if as_json:
        return echo_json(metas)
    typer.echo(format_mask_stats(metas) if metas else f"{dataset}: no masks yet (mlrpl make-masks {dataset} --proportion 0.3)")


@command("write-shards", "mlrpl write-shards /data/mlrpl/coco2014 --workers 8 --shard-size 1GB")
@with_options(ShardConfig)
def write_shards(dataset: Path = DATASET_DIR, as_json: bool = JSON, cfg=None):
    """Write deterministic, checksummed WebDataset shards: DIR/shards/<split>-000000.tar ..."""
    from mlrpl_data.shards import slurm_part, write_shards as write

    if cfg.part is None and (part := slurm_part(dict(os.environ))):
        cfg.part = part  # said, never silent: outside a Slurm array the same command writes every shard
        typer.echo(f"part {part[0]}/{part[1]} (Slurm array task SLURM_ARRAY_TASK_ID="
                   f"{os.environ['SLURM_ARRAY_TASK_ID']}; pass --part 1/1 for every shard)", err=True)
    r = write(dataset, cfg)
    if as_json:
        return echo_json({"written": r.written, "kept": r.kept, "complete": r.complete, "index": r.index})
    target = f"{cfg.max_samples} samples" if cfg.max_samples else f"{cfg.shard_size:,} bytes"
    typer.echo(f"{dataset}/shards: {len(r.written)} written, {len(r.kept)} kept (already complete); target {target} per shard")
    if r.complete:
        skipped = r.index["skipped"]
        splits = ", ".join(f"{k} {v:,}" for k, v in r.index["splits"].items())
        typer.echo(f"index.json and SHA256SUMS: {len(r.index['shards'])} shards ({splits} samples)"
                   + (f"; {len(skipped)} bad image(s) skipped (listed in index.json)" if skipped else ""))
        differs = r.index["size_differs"]
        if differs:
            e = differs[0]
            typer.echo(f"warning: {len(differs)} image(s) differ in size from their annotations (listed in index.json "
                       f"size_differs), e.g. {e['path']}: {e['file'][0]}x{e['file'][1]} on disk, "
                       f"{e['manifest'][0]}x{e['manifest'][1]} in the manifest; the shard JSON gives the file's size", err=True)
    else:
        typer.echo("not all shards exist yet (other --part runs?): index.json is written when the last one is done; "
                   "re-run without --part to finish")


@command("verify", "mlrpl verify https://lab.example/coco2014")
def verify(dataset: str = typer.Argument(..., help="Dataset folder or URL (http(s)://, s3://, ...)"),
           as_json: bool = JSON,
           progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar in bytes (on a terminal)"),
           split: ShardSplit = typer.Option(ShardSplit.all, help="Check this split's shards only (after pull --split)")):
    """Check every shard's sha256, sample count and keys against the index and the manifest."""
    from mlrpl_data.verify import verify as check

    problems = check(dataset, progress=progress, split=split.value)
    if as_json:
        echo_json({"dataset": dataset, "ok": not problems, "problems": problems})
    else:
        for p in problems:
            typer.echo(f"problem: {p}", err=True)
        if not problems:
            typer.echo(f"{dataset}: all shards match the index and the manifest")
    if problems:
        raise typer.Exit(1)


@command("pull", "mlrpl pull https://lab.example/coco2014 /data/mlrpl/coco2014 --jobs 8")
@with_options(PullConfig)
def pull(url: str = typer.Argument(..., help="The published dataset: a folder or URL (http(s)://, s3://, ...)"),
         dataset: Path = typer.Argument(..., help="Where to mirror it (absent, empty, or an earlier pull to resume)"),
         as_json: bool = JSON, cfg=None):
    """Mirror a published dataset: every file checked against files.json and the shard index."""
    from mlrpl_data.pull import pull as mirror, summary

    r = mirror(url, dataset, cfg)
    if as_json:
        return echo_json(summary(r))
    # verify checks the chain through the shards: a copy without them has none to check
    check = (f" (check the whole chain with: mlrpl verify {shlex.quote(str(dataset))}"
             + (f" --split {cfg.split}" if cfg.split != "all" else "") + ")") if cfg.shards else ""
    typer.echo(f"{dataset}: {len(r.fetched)} file(s) fetched ({r.bytes_fetched:,} bytes), {len(r.kept)} already "
               f"complete; every file matches its sha256{check}")


# ---- training -------------------------------------------------------------------------------------------------------------------

def _launch_torchrun(nproc: int) -> None:
    """Re-run this very command under torchrun with `nproc` processes (one per GPU). torchrun's agent
    runs in this process, so a SIGTERM or Ctrl-C reaches the ranks through it (never orphaning them)
    and its signal or a failed rank ends here: each rank has printed its own line, no traceback."""
    import logging

    if "WORLD_SIZE" in os.environ:
        return
    argv = list(sys.argv[1:])
    for i, a in enumerate(argv):
        if a == "--nproc":
            del argv[i:i + 2]
            break
        if a.startswith("--nproc="):
            del argv[i]
            break
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)  # the ranks say what happened
    try:
        run(parse_args(["--standalone", f"--nproc_per_node={nproc}", "-m", "mlrpl.cli", *argv]))
    except SignalException as e:
        raise typer.Exit(128 + int(e.sigval)) from None
    except ChildFailedError as e:
        code = e.get_first_failure()[1].exitcode
        raise typer.Exit(code if code > 0 else 128 - code) from None
    raise typer.Exit(0)


@command("train", "mlrpl train dsrb /data/mlrpl/coco2014 --masks uniform-p0.30-s0 --out runs/coco-dsrb-p0.3")
@with_options(TrainConfig)
def train(ctx: typer.Context,
          method: Method = typer.Argument(..., help=help_list()),
          dataset: str = typer.Argument(..., help="Dataset folder or URL with shards/ and masks/"),
          masks: str = typer.Option("", help="Mask name, e.g. uniform-p0.30-s0 (mlrpl masks DIR lists them)"),
          out: str = typer.Option("runs/run", help="Run directory"),
          resume: Optional[Path] = typer.Option(None, help="Continue the run in this directory (its config is used)"),
          force: bool = typer.Option(False, help="Replace an existing run in --out"),
          nproc: int = typer.Option(1, min=1, help="GPUs/processes: more than 1 launches torchrun itself"),
          cfg=None):
    """Train a model on a dataset's shards and a mask (one GPU, CPU, or many with --nproc)."""
    from mlrpl_train.checkpoint import finished_note, missing_best_reason, resume_config, run_files
    from mlrpl_train.engine import train as run_training

    refuse_foreign(ctx, [str(method)])
    if nproc > 1:
        _launch_torchrun(nproc)
    if resume:
        cfg, changed = resume_config(resume, cfg, given_options(ctx))
        first = os.environ.get("RANK", "0") == "0"  # under --nproc every rank runs this: one line each, not N
        for line in changed if first else ():
            typer.echo(f"resume: {line}", err=True)
        note = finished_note(resume, cfg.epochs)
        if note:  # nothing to do is no failure (exit 0), as a re-run with the same content is not
            if first:
                typer.echo(note, err=True)
            return
    try:
        run = run_training(cfg, resume=resume is not None, force=force)
    except KeyboardInterrupt as e:
        raise Interrupted(getattr(e, "signum", 2), resume_hint(str(method), dataset, Path(cfg.out))) from None
    except Exception as e:
        if not (worker_terminated(e) or errors.pending()):
            raise
        raise Interrupted(15, resume_hint(str(method), dataset, Path(cfg.out))) from None
    if os.environ.get("RANK", "0") != "0":
        return  # one summary per run, from the first process (every rank of --nproc returns here)
    files = run_files(run)  # what was written, never a list of what might have been
    typer.echo(f"{run}: {', '.join(files)}" + ("" if "best.pt" in files else f" (no best.pt: {missing_best_reason(run)})"))


def refuse_single_positive_proportion(ctx: typer.Context, cfg) -> None:
    """make-masks: a --proportion typed with --scheme single-positive (one known positive per image,
    no proportion; MaskConfig drops it) would be ignored: refused."""
    if str(cfg.scheme) == "single-positive" and "proportions" in given_options(ctx):
        raise MlrplError(f"--proportion {ctx.params['proportions']}: single-positive masks know one positive label "
                         "per image and take no proportion; drop --proportion")


def refuse_foreign(ctx: typer.Context, methods: list[str]) -> None:
    """An option typed for a method that is not trained (--gcn-tau for pbce) would be ignored: refused."""
    from mlrpl_train.options import foreign_options

    bad = foreign_options(given_options(ctx), methods)
    if bad:
        raise MlrplError(f"{'; '.join(bad)}: not an option of {', '.join(methods)}, so it would be ignored; "
                         f"drop {'it' if len(bad) == 1 else 'them'}")


def resume_hint(method: str, dataset: str, run: Path) -> str:
    """After an interrupt: the exact command that continues the run (the same command would refuse
    the existing run), or the same command when nothing was kept."""
    from mlrpl_train.checkpoint import CHECKPOINT_LAST

    if not (run / CHECKPOINT_LAST).is_file():
        return "no checkpoint was written yet: re-run the same command to start again"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (f"continue from the last checkpoint with: mlrpl train {method} {shlex.quote(dataset)} "
            f"--resume {shlex.quote(str(run))}" + (f" --nproc {world}" if world > 1 else ""))


# every per-epoch metric of the registry (a metrics.csv column), in lower case: map, map_voc, of1, ..., ece
Metric = choices("Metric", " ".join(m.name.lower() for m in per_epoch_metrics()), __name__)
Preset = choices("Preset", "paper", __name__)
# what --preset paper leaves to the user: where and how it runs, never what is learned
PAPER_FREE = {"workers", "device", "progress", "checkpoint_every", "eval_every", "shuffle_buffer", "on_bad_sample",
              "embeddings", "weights", "seeds", "out", "metric", "preset", "scheme"}


def sweep_methods(text: str) -> list[str]:
    """`mlrpl sweep`'s METHOD: one name, several comma-separated, or `table1` (every Table 1 method the
    registry trains, in the paper's row order)."""
    from mlrpl_train.registry import METHODS

    if text.strip() == "table1":
        return [m.name for m in METHODS if m.table1]
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in method_names()]
    if unknown or not names:
        what = f"{', '.join(unknown)} {'is not a method' if len(unknown) == 1 else 'are not methods'}" if unknown else "names no method"
        raise MlrplError(f"METHOD {text!r}: {what}; use one of {', '.join(method_names())}, several "
                         f"comma-separated, or table1")
    return list(dict.fromkeys(names))


@command("sweep", "mlrpl sweep table1 /data/mlrpl/coco2014 --preset paper --seeds 0,1,2 --out runs/coco-sweep")
@with_options(TrainConfig, exclude=("seed",), defaults={"val_fraction": 0.0},
              adapt=lambda kw: {**kw, "method": sweep_methods(kw["method"])[0]})
def sweep(ctx: typer.Context,
          method: str = typer.Argument(..., metavar="METHOD", help=f"{' | '.join(method_names())}; several "
                                       "comma-separated (dsrb,pbce); or table1 = every Table 1 method, in its order"),
          dataset: str = typer.Argument(..., help="Dataset folder with shards/"),
          proportions: str = typer.Option("0.1:0.9:0.1", help="Known proportions: 0.1,0.5,0.9 or 0.1:0.9:0.1"),
          seeds: str = typer.Option("0", help="Seeds (of the mask and of training), e.g. 0,1,2"),
          scheme: Scheme = typer.Option(Scheme.uniform, help="Mask scheme (see make-masks)"),
          out: str = typer.Option("runs/sweep", help="Sweep folder: one run per (proportion, seed), and the table"),
          metric: Metric = typer.Option(Metric.map, help="The table's metric: map = plain AP (= scikit-learn), map_voc = "
                                        "VOC-interpolated (the published code's), or another; table.csv holds all"),
          preset: Optional[Preset] = typer.Option(None, help="paper = the paper's protocol: nine proportions "
                                                  "0.1..0.9, its schedule (the defaults), the whole training split; "
                                                  "the table adds the test-selected best epoch, named as such"),
          cfg=None):
    """Train one run per method, proportion and seed, then write Table 1 (Markdown, CSV) and a mAP plot;
    on COCO 2014, VOC 2007 and VG-200 as published each method's published row and the difference are added."""
    from mlrpl_data.folder import DatasetFolder
    from mlrpl_data.masks import parse_proportions
    from mlrpl_data.options import parse_int_list
    from mlrpl_train.reports import PUBLISHED_SCHEMES
    from mlrpl_train.published import benchmark_dataset
    from mlrpl_train.sweep import paper_preset, run_sweeps, write_table

    try:
        seed_list = list(parse_int_list(seeds))
    except MlrplError as e:
        raise MlrplError(f"--seeds {e}") from None
    if min(seed_list) < 0:
        raise MlrplError(f"--seeds {seeds}: seeds must be >= 0")
    if preset == "paper":
        pinned = sorted(given_options(ctx) - PAPER_FREE - {"method", "dataset"})
        if pinned:
            raise MlrplError(f"--preset paper fixes the protocol; drop {', '.join('--' + n.replace('_', '-') for n in pinned)}")
        proportions = "0.1:0.9:0.1"
    props = parse_proportions(proportions)
    refuse_foreign(ctx, sweep_methods(method))
    configs = [dataclasses.replace(cfg, method=Method(name)) for name in sweep_methods(method)]
    if preset == "paper":  # fp32 and the label embeddings, every method refused before any training
        configs = [paper_preset(c) for c in configs]
    run_sweeps(configs, props, seed_list, Path(out), scheme)  # a failure removes the masks and folder it made
    folder = DatasetFolder(dataset)
    t = write_table(Path(out), title=f"{folder.card['name']}: final-epoch test metrics ({scheme} masks)",
                    metric=get_metric(str(metric)).name,
                    dataset=benchmark_dataset(folder.card, folder.class_names)
                    if scheme in PUBLISHED_SCHEMES else None,  # the paper's masks only
                    best_on_test=preset == "paper")
    typer.echo(t["markdown"])
    typer.echo(f"{out}: {', '.join(t['files'])}")  # what write_table wrote (no table.csv without a mAP)


@command("methods", "mlrpl methods")
def methods(as_json: bool = JSON):
    """List the methods `mlrpl train` knows (the method registry): name, Table 1 row, summary, source."""
    from mlrpl_train.registry import METHODS

    rows = [{"method": m.name, "table1": m.table1, "summary": m.summary, "options": m.group,
             "uses_embeddings": m.uses_embeddings, "source": m.source} for m in METHODS]
    if as_json:
        return echo_json(rows)
    for r in rows:
        typer.echo(f"{r['method']:<8} {r['table1'] or '(not in Table 1)':<16} {r['summary']}")
        typer.echo(f"{'':<8} {'':<16} {r['source']}" + ("; uses label embeddings (mlrpl embed-labels)"
                                                        if r["uses_embeddings"] else ""))


@command("embed-labels", "mlrpl embed-labels /data/mlrpl/coco2014 --from glove.840B.300d.txt")
def embed_labels(dataset: Path = DATASET_DIR,
                 source: Optional[Path] = typer.Option(None, "--from", help="glove.txt (word v1 v2 ...) or vectors.npy (C, E)")):
    """Store DIR/label_embeddings.npy (+ .json provenance) for CSRL's semantic decoupling."""
    from mlrpl_data.embeddings import embed_labels as embed

    meta = embed(dataset, source)
    typer.echo(f"{dataset}/label_embeddings.npy: {meta['shape'][0]} x {meta['shape'][1]} ({meta['method']})")


Checkpoint = choices("Checkpoint", "last best", __name__)


@command("evaluate", "mlrpl evaluate runs/coco-dsrb-p0.3 /data/mlrpl/coco2014")
def evaluate(run_or_checkpoint: Path = typer.Argument(..., help="A run directory or a checkpoint file"),
             dataset: str = typer.Argument(..., help="Dataset folder or URL (its test shards)"),
             checkpoint: Checkpoint = typer.Option(Checkpoint.last, help="Of a run directory: last.pt (the last epoch) "
                                                   "or best.pt (chosen on the validation split, or as its run says)"),
             out: Optional[Path] = typer.Option(None, help="Where to write the reports (default: beside the checkpoint)"),
             scores: Optional[Path] = typer.Option(None, help="Also write per-image scores here (Parquet: key, scores, "
                                                  "labels), to recompute any metric without the model"),
             workers: int = typer.Option(2, min=0, help="Loader processes"),
             as_json: bool = JSON,
             progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar (on a terminal)")):
    """Metrics table (which checkpoint, how selected, both mAPs, the paper's number where it has one),
    per-class AP as JSON and as a bar chart PNG."""
    from mlrpl_train.reports import evaluate_checkpoint
    from mlrpl_train.metrics import format_metrics

    m = evaluate_checkpoint(run_or_checkpoint, dataset, out, workers, progress=progress, checkpoint=str(checkpoint),
                            scores=scores)
    if as_json:
        return echo_json(m)
    typer.echo(format_metrics(m))
    typer.echo(f"{m['report_dir']}: eval_metrics.json, per_class_ap.json, per_class_ap.png")


@command("predict", "mlrpl predict runs/coco-dsrb-p0.3 photos/ street.jpg --top-k 5 --out preds.parquet")
def predict(model: Path = typer.Argument(..., help="A run directory, a checkpoint, or a file written by mlrpl export"),
            inputs: list[str] = typer.Argument(..., help="Image files, folders of images (recursively), or a dataset "
                                               "(folder or URL: its test shards)"),
            checkpoint: Checkpoint = typer.Option(Checkpoint.last, help="Of a run directory: last.pt or best.pt"),
            top_k: int = typer.Option(5, min=1, help="Classes shown (and written) per image, most probable first"),
            threshold: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Show only classes at or above "
                                                      "this probability; --out lists them as above_threshold "
                                                      "(default 0.5 there)"),
            out: Optional[Path] = typer.Option(None, help="Write key, scores, top_k, top_k_scores, above_threshold "
                                               "as Parquet (then only a summary is printed)"),
            batch_size: int = typer.Option(32, min=1, help="Images per forward pass"),
            device: str = typer.Option("auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N, mps"),
            as_json: bool = JSON,
            progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar (on a terminal)")):
    """Score images with a trained model: each image's most probable classes with their probabilities."""
    from mlrpl_train.inference import check_output, load_predictor, predict_inputs

    if out:
        check_output(out, model, inputs)
    predictor = load_predictor(model, str(checkpoint), device, batch_size)
    preds = predict_inputs(predictor, inputs, progress)
    tops = preds.top(top_k, threshold)
    if out:
        preds.write_parquet(out, top_k, threshold)
    if as_json:
        return echo_json([{"key": k, "top": [{"class": c, "probability": s} for c, s in t]}
                          for k, t in zip(preds.keys, tops)])
    if out:
        typer.echo(f"{out}: {len(preds.keys):,} images x {len(preds.class_names)} classes ({predictor.method}, "
                   f"{predictor.source})")
        return
    for key, t in zip(preds.keys, tops):
        typer.echo(f"{key}\t" + ("  ".join(f"{c} {s:.3f}" for c, s in t) or "(nothing above the threshold)"))


ExportFormat = choices("ExportFormat", "weights torchscript exported", __name__)


@command("export", "mlrpl export runs/coco-dsrb-p0.3 --out coco-dsrb.pt --format torchscript")
def export(run: Path = typer.Argument(..., help="A run directory or a checkpoint file"),
           out: Path = typer.Option(..., help="The model file to write"),
           fmt: ExportFormat = typer.Option(ExportFormat.weights, "--format", help="weights: the weights with the class "
                                            "names, preprocessing and method, for mlrpl (no optimizer state); "
                                            "torchscript / exported: a graph that runs with torch alone (uint8 "
                                            "(B, size, size, 3) in, probabilities out)"),
           checkpoint: Checkpoint = typer.Option(Checkpoint.last, help="Of a run directory: last.pt or best.pt"),
           as_json: bool = JSON):
    """Write a trained model for use elsewhere (mlrpl predict accepts it)."""
    from mlrpl_train.inference import export_run

    meta = export_run(run, out, str(fmt), str(checkpoint))
    if as_json:
        return echo_json({**meta, "file": str(out), "bytes": out.stat().st_size})
    p = meta["preprocess"]
    typer.echo(f"{out}: {meta['method']} as {fmt} ({len(meta['class_names'])} classes, {meta['source']} epoch "
               f"{meta['epoch']}), {out.stat().st_size / 1e6:.1f} MB; input: {p['size']}x{p['size']} RGB, "
               f"mean {p['mean']}, std {p['std']}")


@command("demo", "mlrpl demo --out mlrpl-demo")
def demo(out: Path = typer.Option(Path("mlrpl-demo"), help="Working folder for the demo"),
         epochs: int = typer.Option(12, min=1, help="Training epochs of each method"),
         force: bool = typer.Option(False, help="Rebuild the raw data from scratch")):
    """The main job on the embedded data: raw digits -> manifest -> 10% masks -> shards -> partial BCE and DSRB -> evaluate both."""
    from mlrpl_train.demo import format_comparison, run_demo

    results = run_demo(out, epochs=epochs, force=force, say=typer.echo)
    typer.echo(format_comparison(results))
    typer.echo(f"chance mAP (the positive rate) is about {100 * results['chance_map']:.1f}; "
               f"reports in {out}/run-pbce and {out}/run-dsrb")


def main() -> None:
    raise_on_sigterm()  # Slurm's time limit and `docker stop` are handled as Ctrl-C is
    try:
        app(prog_name="mlrpl")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    exit_now(code)


def exit_now(code: int) -> None:
    """Exit as Python would (threads joined, atexit handlers run, output flushed), then skip the C++
    static destructors: pyarrow's thread pool can abort there ('terminate called without an active
    exception', exit 134) after the command has printed its result or its one line."""
    import atexit
    import threading

    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()  # non-daemon threads joined, as at a normal exit
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
