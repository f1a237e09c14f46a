"""Every training option, declared once (type, default, help, range): `mlrpl train` and `mlrpl sweep`
build their flags from these dataclasses, the engine reads them, and `config.json` holds them.

The defaults are the paper's recipe (Sec. 5.1) and, where the paper is silent, the authors' code.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from mlrpl_data.errors import BadInputError
from mlrpl_data.options import (check_ranges, choices, from_dict, opt, parse_int_list, progress_field, show_int_list,
                                to_dict)


from .registry import get as get_method, help_list, method_names

Method = choices("Method", " ".join(method_names()), __name__)  # the registry's names, in its order
LlVariant = choices("LlVariant", "r ct cp", __name__)
Backbone = choices("Backbone", "resnet18 resnet34 resnet50 resnet101 resnet152 tiny", __name__)
Freeze = choices("Freeze", "auto none layer1 layer2 layer3 layer4", __name__)
Device = choices("Device", "auto cpu cuda", __name__)
OnBadSample = choices("OnBadSample", "skip fail", __name__)
BceForm = choices("BceForm", "batch per-image", __name__)
ContrastiveForm = choices("ContrastiveForm", "published literal", __name__)
Csrl = choices("Csrl", "sd sa", __name__)
Blend = choices("Blend", "map vector", __name__)
Form = choices("Form", "cheap naive", __name__)
Select = choices("Select", "val test-as-published", __name__)
Precision = choices("Precision", "auto bf16 fp32", __name__)
Prototypes = choices("Prototypes", "mean kmeans", __name__)
ParamShape = choices("ParamShape", "class scalar", __name__)
Adjacency = choices("Adjacency", "code paper", __name__)
Curriculum = choices("Curriculum", "bayes threshold proportion positive none", __name__)


def default_workers() -> int:
    """Loader processes: 4, or fewer on a machine with fewer cores (more would oversubscribe)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores))


@dataclass
class DsrbOptions:
    """DSRB's options (Section 4); SSGRL is DSRB without blending and without the contrastive loss."""

    csrl: Csrl = field(default=Csrl.sd, metadata=opt(
        "CSRL: sd = semantic decoupling guided by label embeddings, sa = semantic attention (Table 2 'w/ SA')"))
    iprb: bool = field(default=True, metadata=opt(
        "Instance-perspective blending (eq. 6-9); --no-iprb is the Table 2 ablation", flags="--iprb/--no-iprb"))
    pprb: bool = field(default=True, metadata=opt(
        "Prototype-perspective blending (eq. 10-13); --no-pprb is the Table 2 ablation", flags="--pprb/--no-pprb"))
    alpha_shape: ParamShape = field(default=ParamShape("class"), metadata=opt(
        "IPRB's alpha and PPRB's beta: class = one per class (the paper's eq. 8 and 12), scalar = one each for "
        "all classes (the authors' code)"))
    learn_alpha: bool = field(default=True, metadata=opt(
        "Learn IPRB's alpha (--alpha-shape) from 0.5, or keep it at 0.5 (Table 2 'fixed alpha')",
        flags="--learn-alpha/--fixed-alpha"))
    learn_beta: bool = field(default=True, metadata=opt(
        "Learn PPRB's beta (--alpha-shape) from 0.5, or keep it at 0.5 (Table 2 'fixed beta')",
        flags="--learn-beta/--fixed-beta"))
    blend: Blend = field(default=Blend.map, metadata=opt(
        "PPRB prototypes: map = one per grid cell (location-sensitive), vector = one per class (Table 2 'w/ RV')"))
    prototypes: Prototypes = field(default=Prototypes.mean, metadata=opt(
        "mean = the mean known-positive representation of each class (per grid cell with --blend map: DSRB); "
        "kmeans = K-means centres of each class's known-positive representations (SARB, AAAI 2022; "
        "--blend and --grid-k then play no part)"))
    prototype_clusters: int = field(default=10, metadata=opt(
        "K centres per class with --prototypes kmeans (SARB's script: 10)", min=1))
    grid_k: int = field(default=1, metadata=opt("Prototypes on a 2^K x 2^K grid (the paper: K = 1)", min=0, max=4))
    blend_start: int = field(default=5, metadata=opt("Epoch (0-based) from which IPRB and PPRB blend", min=0))
    prototype_every: int = field(default=5, metadata=opt("Recompute the prototypes every N epochs from --blend-start",
                                                         min=1))
    contrastive_weight: float = field(default=0.05, metadata=opt("lambda of eq. 16 (0: no contrastive loss)", min=0))
    contrastive: ContrastiveForm = field(default=ContrastiveForm.published, metadata=opt(
        "published = the authors' loss (known pairs only, 2P random + P hardest negatives, mean, ramped in over the "
        "first epoch); literal = eq. 3-4 summed over all pairs, unknown labels as negatives"))
    feat_dim: int = field(default=1024, metadata=opt("Feature size after the 1x1 conv (the paper: 1024)", min=1))
    attn_dim: int = field(default=512, metadata=opt("Width of the semantic-decoupling attention (authors' code: 512)",
                                                    min=1))
    ggnn_steps: int = field(default=3, metadata=opt("Propagation steps of the gated graph network", min=1))
    pool2x2: bool = field(default=True, metadata=opt(
        "The published 2x2 average pool after layer4 (a 7x7 map at 448 px)", flags="--pool2x2/--no-pool2x2"))
    save_memory: bool = field(default=False, metadata=opt(
        "Activation checkpointing of the graph-network passes: their activations are recomputed in the backward "
        "pass instead of kept (less memory, some more time; the same results)", flags="--save-memory/--no-save-memory"))
    form: Form = field(default=Form.cheap, metadata=opt(
        "cheap = blends on pooled vectors; naive = the published feature-map form (slow; the test oracle)"))

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.prototypes == Prototypes.kmeans and self.form == Form.naive:
            raise BadInputError("--prototypes kmeans: K-means centres are pooled vectors (SARB), which the naive "
                                "feature-map form has no use for; drop --form naive")


@dataclass
class BaselineOptions:
    """The loss baselines on the partial-BCE architecture; defaults are their authors' training settings."""

    asl_gamma_pos: float = field(default=0.0, metadata=opt("ASL's focusing exponent of positives (authors: 0)", min=0))
    asl_gamma_neg: float = field(default=4.0, metadata=opt("ASL's focusing exponent of negatives (authors: 4)", min=0))
    asl_clip: float = field(default=0.05, metadata=opt("ASL's probability shift of negatives (authors: 0.05)", min=0,
                                                       max=1))
    variant: LlVariant = field(default=LlVariant.r, metadata=opt(
        "Large Loss Matters: r = reject the large losses of unknown labels (LL-R), ct = count them as positives "
        "for that step (LL-Ct), cp = make them positive for good (LL-Cp)"))
    delta_rel: float = field(default=0.2, metadata=opt(
        "Large Loss Matters: per cent of the batch's entries rejected/corrected, added each epoch after the first "
        "(LL-Cp: per batch, fixed); the authors' range is 0.1-0.5", min=0, max=100))

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class KggrOptions:
    """KGGR's options (Chen et al., TPAMI 2022); defaults from the one public implementation of its MLR
    framework (WS-MLR `model/KGGR.py`). Names carry `kggr_` because option names are flat across methods."""

    kggr_feat_dim: int = field(default=1024, metadata=opt(
        "KGGR: feature size D after the 1x1 conv, of the graph nodes and the classifiers (public code: 1024)", min=1))
    kggr_attn_dim: int = field(default=512, metadata=opt(
        "KGGR: width of the semantic-decoupling attention (public code: 512)", min=1))
    kggr_steps: int = field(default=3, metadata=opt(
        "KGGR: propagation steps T of both gated graph networks, features and classifiers (public code: 3)", min=1))

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class GcnOptions:
    """GCN-ML's and P-GCN's options: the label graph (ML-GCN eq. 6-8) and the graph layers' width."""

    adjacency: Adjacency = field(default=Adjacency.code, metadata=opt(
        "Re-weighted label graph: code = the authors' gen_A + gen_adj (p / column sums + I, then D^-1/2 A^T "
        "D^-1/2; the published numbers), paper = eq. 8 (p / row sums off the diagonal, 1 - p on it)"))
    gcn_tau: float = field(default=0.4, metadata=opt(
        "Binarisation threshold tau of P(j | i) (eq. 7; the paper and the authors' code: 0.4)", min=0, max=1))
    gcn_p: float | None = field(default=None, metadata=opt(
        "Re-weighting p (eq. 8); default: the form's own, 0.25 for code (gen_A), 0.2 for paper (Sec. 4.1)",
        min=0, max=1))
    gcn_hidden: int = field(default=1024, metadata=opt("Width of the first graph layer (the authors': 1024)", min=1))

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class ClOptions:
    """Curriculum Labeling (Durand, Mehrasa, Mori, CVPR 2019): the normalised partial BCE and the
    curriculum that turns the most confident unknown labels into pseudo-labels (model/cl.py)."""

    norm_gamma: float = field(default=1.0, metadata=opt(
        "gamma of the partial-BCE normalisation g(p) = alpha p^gamma + beta (the paper: 1)"))
    g_at_tenth: float = field(default=5.0, metadata=opt(
        "g(0.1): the weight of an image with a tenth of its labels known, g(1) = 1 (the paper: 5)", min=0,
        min_open=True))
    curriculum: Curriculum = field(default=Curriculum.bayes, metadata=opt(
        "Which unknown labels become pseudo-labels: bayes = low Bayesian (MC-dropout) uncertainty (the paper's "
        "best), threshold = |score| > --score-threshold, proportion = the --label-fraction most confident, "
        "positive = score > --score-threshold as positives only, none = no curriculum (partial-BCE alone)"))
    max_uncertainty: float = field(default=0.3, metadata=opt(
        "bayes: label an unknown entry when the entropy (bits) of its MC-averaged probability is below this",
        min=0, max=1))
    score_threshold: float = field(default=2.0, metadata=opt(
        "threshold/positive: the logit magnitude above which an unknown entry is labelled", min=0))
    label_fraction: float = field(default=0.1, metadata=opt(
        "proportion: the fraction of the still-unknown entries labelled at each labelling epoch", min=0, max=1))
    label_start: int = field(default=10, metadata=opt(
        "First labelling epoch (0-based): the model trains on the known labels alone before it", min=0))
    label_every: int = field(default=1, metadata=opt("Label again every N epochs from --label-start", min=1))
    mc_samples: int = field(default=10, metadata=opt("bayes: dropout samples per image when labelling", min=1))
    head_dropout: float = field(default=0.5, metadata=opt(
        "Dropout before the classifier (trained with it; MC-sampled by bayes)", min=0, max=0.9))

    def __post_init__(self) -> None:
        check_ranges(self)

    def check(self, cfg: "TrainConfig") -> None:
        """What only a CL run must satisfy (TrainConfig calls the method's group's check)."""
        if cfg.bce != BceForm.batch:
            raise BadInputError(f"--bce {cfg.bce}: CL trains with its own normalised partial BCE (g(p)/C per image, "
                                f"--norm-gamma, --g-at-tenth), not --bce; drop --bce")
        if self.norm_gamma == 0:
            raise BadInputError("--norm-gamma 0: g(p) = alpha p^gamma + beta would be constant and cannot meet both "
                                "g(1) = 1 and g(0.1) = --g-at-tenth; use a non-zero gamma (the paper: 1)")
        if self.curriculum == Curriculum.bayes and self.head_dropout == 0:
            raise BadInputError("--curriculum bayes with --head-dropout 0: every MC-dropout sample would be the same "
                                "and the uncertainty meaningless; use --head-dropout above 0 (default 0.5) or another "
                                "--curriculum")


@dataclass
class TrainConfig:
    """One training run: what to train on, where to write, and how (the engine's options + DSRB's)."""

    method: Method = field(metadata=opt(help_list(), cli=False))
    dataset: str = field(metadata=opt("Dataset folder or URL", cli=False))
    masks: str = field(default="", metadata=opt("Mask name (a run needs one; a sweep makes its own)", cli=False))
    out: str = field(default="runs/run", metadata=opt("Run directory", cli=False))
    embeddings: str | None = field(default=None, metadata=opt(
        "Label embeddings .npy of the methods that use them (default DATASET/label_embeddings.npy, else learned)"))
    backbone: Backbone = field(default=Backbone.resnet101, metadata=opt(
        "Backbone network (tiny: a small CNN for tests and the CPU demo)"))
    weights: str = field(default="imagenet", metadata=opt(
        "imagenet (torchvision's IMAGENET1K_V1 file from the local torch cache, never downloaded), a weights file, "
        "or none"))
    freeze: Freeze = field(default=Freeze.auto, metadata=opt(
        "Freeze conv1..this layer (BatchNorm in eval mode); auto = layer3 with pretrained weights (the paper), "
        "none with --weights none (random filters must learn)"))
    epochs: int = field(default=20, metadata=opt("Training epochs", min=1))
    batch_size: int = field(default=32, metadata=opt("Images per batch (per GPU)", min=1))
    lr: float = field(default=1e-5, metadata=opt("Adam learning rate", min=0, min_open=True))
    lr_step: int = field(default=10, metadata=opt("Divide the learning rate by 10 every this many epochs", min=1))
    weight_decay: float = field(default=5e-4, metadata=opt("Adam weight decay", min=0))
    image_size: int = field(default=448, metadata=opt("Side of the training and test images fed to the network",
                                                      min=8))
    crop_scales: tuple[int, ...] = field(default=(512, 448, 384, 320, 256), metadata=opt(
        "Square crop sizes drawn from the 512x512 resize, comma-separated (512 alone: no crop)", min=1, max=512,
        parse=parse_int_list, show=show_int_list))
    workers: int | None = field(default=None, metadata=opt("Loader processes per GPU (default: min(4, CPU cores))",
                                                           min=0))
    seed: int = field(default=0, metadata=opt("Seed of initialisation, sample order and augmentation", min=0))
    checkpoint_every: int = field(default=0, metadata=opt("Also checkpoint every N steps (0: once per epoch)", min=0))
    shuffle_buffer: int = field(default=1000, metadata=opt("Samples in the streaming shuffle buffer", min=1))
    precision: Precision = field(default=Precision.auto, metadata=opt(
        "auto = bf16 autocast and channels-last memory on a GPU, fp32 on a CPU; bf16 = that path on any device "
        "(the tests run the GPU path on a CPU so); fp32 = never"))
    on_bad_sample: OnBadSample = field(default=OnBadSample.skip, metadata=opt(
        "A corrupt sample is skipped and counted, or stops the run"))
    device: Device = field(default=Device.auto, metadata=opt("auto = the GPU when there is one"))
    eval_every: int = field(default=1, metadata=opt("Evaluate every N epochs (and always after the last)", min=1))
    progress: bool = progress_field("Progress bars")
    val_fraction: float = field(default=0.1, metadata=opt(
        "Fraction of the training images held out to choose best.pt (hash-chosen from the key alone: the same in "
        "every run, mask and seed), evaluated on the mask's known labels only; 0: no validation and no best.pt, "
        "the last epoch is the result", min=0, max=0.5))
    select: Select = field(default=Select.val, metadata=opt(
        "How best.pt is chosen: val = the best validation mAP; test-as-published = the best TEST mAP, as the "
        "published code does (a selection on the test set: every output of the run says so)"))
    bce: BceForm = field(default=BceForm.batch, metadata=opt(
        "batch = one mean over the batch's known labels (the authors' code); per-image = eq. 14-15"))
    dsrb: DsrbOptions = field(default_factory=DsrbOptions, metadata=opt("DSRB/SSGRL options", cli=False))
    baselines: BaselineOptions = field(default_factory=BaselineOptions, metadata=opt("ASL / LL options", cli=False))
    kggr: KggrOptions = field(default_factory=KggrOptions, metadata=opt("KGGR options", cli=False))
    gcn: GcnOptions = field(default_factory=GcnOptions, metadata=opt("GCN-ML / P-GCN options", cli=False))
    cl: ClOptions = field(default_factory=ClOptions, metadata=opt("Curriculum Labeling options", cli=False))

    def __post_init__(self) -> None:
        check_ranges(self)
        group = get_method(self.method).group  # a method's own rules, checked only when it is the one trained
        if group and hasattr(getattr(self, group), "check"):
            getattr(self, group).check(self)
        if self.freeze == Freeze.auto:
            self.freeze = Freeze.layer3 if self.weights not in ("none", "") else Freeze.none
        if self.workers is None:
            self.workers = default_workers()

    def to_json(self) -> dict[str, Any]:
        return to_dict(self)


def foreign_options(names: set[str], methods: list[str]) -> list[str]:
    """The flags among option `names` that belong to another method's options group than those of
    `methods` (e.g. --gcn-tau for pbce): the option would be ignored, so it is refused. Lines like
    "--gcn-tau (an option of gcn-ml, p-gcn)"."""
    from .registry import METHODS

    own = {get_method(m).group for m in methods}
    out = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in own or not (isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory)):
            continue
        users = [m.name for m in METHODS if m.group == f.name]
        out += [f"--{g.name.replace('_', '-')} (an option of {', '.join(users)})"
                for g in dataclasses.fields(f.default_factory) if g.name in names]
    return out


def option_groups(cfg: TrainConfig) -> list[Any]:
    """The option groups of a config (cfg.dsrb, cfg.baselines, ...): its dataclass-valued fields."""
    return [getattr(cfg, f.name) for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name))]


def config_from_json(data: Any, where: str) -> TrainConfig:
    """A TrainConfig read back from config.json or a checkpoint: unknown keys are an error.
    A config written before --embeddings left the dsrb group (mlrpl <= 0.19) is read as it meant."""
    if isinstance(data, dict) and isinstance(data.get("dsrb"), dict) and "embeddings" in data["dsrb"]:
        data = {**data, "dsrb": {k: v for k, v in data["dsrb"].items() if k != "embeddings"},
                "embeddings": data.get("embeddings", data["dsrb"]["embeddings"])}
    return from_dict(TrainConfig, data, where)
