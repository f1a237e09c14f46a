"""The method registry: every method mlrpl trains, declared once.

An entry says what the rest of mlrpl needs to know about a method: its command-line name, a
one-line summary (the --help lists and the README read it), where its model is built, which
group of TrainConfig holds its options, its row name in the paper's Table 1, what it takes from
the training data, and what DDP must know. The CLI's METHOD choices, `mlrpl sweep`'s row order,
the published rows, the model factory and the DDP wrapper all read this tuple; nothing else
spells a method's name.

Adding a method: its model module (mlrpl_train/model/<name>.py) with

    build(cfg, spec, backbone, frozen, state) -> PartialLabelModel

(mlrpl_train/model/base.py: `model(x) -> logits (B, C)` and, in training,
`model(x, partial=y, epoch=, step=, progress=[, keys=]) -> (loss, logs)`, its hooks and wants_keys);
its options dataclass in options.py with one TrainConfig field (if it has options); and one
MethodSpec below. This module imports nothing heavy: the CLI reads it without importing torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class MethodSpec:
    name: str  # `mlrpl train NAME`
    summary: str  # "Title: what it is", one line for --help, `mlrpl methods` and the README
    builder: str  # "module:function" of build(cfg, spec, backbone, frozen, state) -> PartialLabelModel
    group: str | None = None  # the TrainConfig field holding its options (None: the shared options only)
    table1: str | None = None  # its row name in the paper's Table 1 (None: not in the paper)
    uses_embeddings: bool = False  # reads label embeddings (DIR/label_embeddings.npy or --embeddings)
    ddp_unused: bool = False  # some parameters take no gradient in some steps (DDP find_unused_parameters)
    source: str = ""  # the method's paper (and public code)
    published_note: str = ""  # how its Table 1 figures were obtained when the paper did not run it (sweep tables say so)

    def build(self) -> Callable:
        module, fn = self.builder.split(":")
        return getattr(importlib.import_module(module), fn)


# in the paper's Table 1 row order (sweep tables follow it), then methods outside the paper
METHODS: tuple[MethodSpec, ...] = (
    MethodSpec("ssgrl", "SSGRL: semantic decoupling + gated graph network (DSRB without blending and contrastive loss)",
               "mlrpl_train.model.dsrb:build", group="dsrb", table1="SSGRL", uses_embeddings=True,
               ddp_unused=True, source="Chen, Xu, Hui, Wu, Lin, ICCV 2019"),
    MethodSpec("gcn-ml", "GCN-ML: ML-GCN, a two-layer GCN over label embeddings gives the classifiers of the "
               "max-pooled features (--adjacency code|paper)", "mlrpl_train.model.gcn:build_gcn_ml", group="gcn",
               table1="GCN-ML", uses_embeddings=True,
               source="Chen, Wei, Wang, Guo, CVPR 2019; megvii-research/ML-GCN"),
    MethodSpec("kggr", "KGGR: semantic decoupling + graph propagation of features and of classifiers",
               "mlrpl_train.model.kggr:build", group="kggr", table1="KGGR", uses_embeddings=True,
               source="Chen, Lin, Chen, Hui, Wu, TPAMI 44(3) 2022, arXiv 2009.09450; zizizihua/WS-MLR model/KGGR.py"),
    MethodSpec("p-gcn", "P-GCN: a GCN over label-aware features gives inter-dependent scores (layers our reading: "
               "no public code)", "mlrpl_train.model.gcn:build_p_gcn", group="gcn", table1="P-GCN",
               source="Chen, Wei, Wang, Guo, TPAMI 2021; no code released: its Table 1 figures are its authors' own",
               published_note="reported by its authors"),
    MethodSpec("asl", "ASL: asymmetric loss on the partial-BCE architecture (--asl-gamma-neg ...)",
               "mlrpl_train.model.pbce:build_asl", group="baselines", table1="ASL",
               source="Ridnik et al., ICCV 2021; Alibaba-MIIL/ASL"),
    MethodSpec("cl", "CL: curriculum labeling, normalised partial BCE + confident unknown labels as pseudo-labels",
               "mlrpl_train.model.cl:build", group="cl", table1="CL",
               source="Durand, Mehrasa, Mori, CVPR 2019 (arXiv 1902.09720; no public code)"),
    MethodSpec("pbce", "Partial BCE: backbone, average pool, linear; BCE on the known labels",
               "mlrpl_train.model.pbce:build_pbce", table1="Partial BCE",
               source="Durand, Mehrasa, Mori, CVPR 2019 (as the DSRB authors train it)"),
    MethodSpec("dsrb", "DSRB: SSGRL + instance- and prototype-perspective blending + contrastive loss",
               "mlrpl_train.model.dsrb:build", group="dsrb", table1="DSRB", uses_embeddings=True,
               ddp_unused=True, source="Pu, Sun, Chen, Wu, Lin, arXiv 2205.13092; HCPLab-SYSU/HCP-MLR-PL"),
    MethodSpec("llr", "Large Loss Matters: LL-R, LL-Ct or LL-Cp on the partial-BCE architecture (--variant r|ct|cp)",
               "mlrpl_train.model.pbce:build_llr", group="baselines",
               source="Kim, Kim, Kim, Lee, CVPR 2022"),
)

BY_NAME = {m.name: m for m in METHODS}


def method_names() -> list[str]:
    return [m.name for m in METHODS]


def get(name: str) -> MethodSpec:
    """The entry of `name` (a Method choice or its string); KeyError for an unknown name."""
    return BY_NAME[str(name)]


def by_table1(row: str) -> MethodSpec | None:
    """The method whose Table 1 row is `row` (e.g. "Partial BCE"), or None."""
    return next((m for m in METHODS if m.table1 == row), None)


def help_list() -> str:
    """The methods for --help: "ssgrl (SSGRL) | ... | pbce (Partial BCE) | ..." (details: `mlrpl methods`)."""
    return " | ".join(f"{m.name} ({m.summary.split(':')[0]})" for m in METHODS) + "; `mlrpl methods` says more"
