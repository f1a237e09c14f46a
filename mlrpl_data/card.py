"""The text of a dataset folder's two Hugging Face dataset cards, README.md and masks/README.md;
folder.DatasetFolder.refresh writes them, with files.json.

The YAML headers follow the dataset-card convention (`configs:` with data_files), one card per file
format because datasets (5.2) infers one builder per folder (huggingface/datasets#7101):
README.md declares the shards (config `default`, a split per shard split the folder holds:
`datasets.load_dataset(DIR)`, the WebDataset builder; a folder without shards: config `images`,
the images table), masks/README.md one config per mask
(`datasets.load_dataset(f"{DIR}/masks", NAME)`, the Parquet builder: columns key and labels).
README.md's body says what the data is, where the raw archives come from and their checksums,
the counts, the fingerprint, the masks with their stats, the licences and how to cite.

files.json lists every file of the folder other than the shards (which shards/index.json lists)
with its size and sha256: `mlrpl pull` copies and checks exactly these. Both are rewritten
whenever the manifest, a mask, the shards or the label embeddings change; neither holds a time
or a local path, so two labs with the same data write the same bytes.
"""

from __future__ import annotations

import yaml

from .formats import source_terms

PAPER = ("Pu et al., Dual-Perspective Semantic-Aware Representation Blending for Multi-Label Image Recognition "
         "with Partial Labels, arXiv 2205.13092.")


def yaml_header(card: dict, licence: str, configs: list[dict]) -> str:
    """The card's YAML header, between its two `---` lines: name, licence, tags and the `configs:` list
    (Hugging Face's data_files convention: [{"config_name", "data_files": [{"split", "path"}]}]).
    Written by PyYAML, never by formatting: a version or name holding ": " or "#" stays a string, and the
    same data gives the same bytes (keys in this order, no line folding)."""
    head: dict = {"pretty_name": f"{card['name']} {card['version']} (mlrpl)", "license": licence,
                  "task_categories": ["image-classification"], "tags": ["multi-label", "partial-labels", "mlrpl"]}
    if configs:
        head["configs"] = configs
    text = yaml.safe_dump(head, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1 << 30)
    return f"---\n{text}---"


def root_configs(folder) -> list[dict]:
    """The root card's one config. With shards: `default`, a split per shard split the folder holds
    whole (a `pull --split train` copy lists train only), read by datasets' WebDataset builder.
    Without (before write-shards, a `pull --no-shards` copy): `images`, the manifest's images table
    (key, split, path, width, height, labels) as one split `images`, read by the Parquet builder;
    `load_dataset(DIR)` would otherwise guess a builder from the folder's Parquet files and fail.
    The masks are not here: datasets (5.2; huggingface/datasets#7101) infers ONE builder per folder
    from its first config's files, so a Parquet mask config beside the shards would be handed to the
    WebDataset builder."""
    splits = folder.held_splits()
    if not splits:
        return [{"config_name": "images", "data_files": [{"split": "images", "path": "images.parquet"}]}]
    return [{"config_name": "default", "data_files": [{"split": sp, "path": f"shards/{sp}-*.tar"} for sp in splits]}]


def mask_configs(masks: list[dict]) -> list[dict]:
    """masks/README.md's configs: one per mask, named after it, its Parquet file (relative to masks/) as
    its split (a split other than train or test is listed as train), read by datasets' Parquet builder."""
    return [{"config_name": m["name"],
             "data_files": [{"split": m["split"] if m["split"] in ("train", "test") else "train",
                             "path": f"{m['name']}.parquet"}]}
            for m in masks]


def dataset_card(folder) -> str:
    """README.md's text for a folder.DatasetFolder (passed in, not imported: folder.py calls this):
    its card, mask sidecars and shard index. Raises BadInputError when dataset.json is damaged."""
    card = folder.card
    fmt = card.get("options", {}).get("format", "")
    licence, licence_text, citation = source_terms(fmt, card["name"])  # the builder's own (formats.py)
    masks = folder.mask_sidecars(skip_bad=True)  # a damaged mask is verify's to report, not the card's
    index = folder.index
    head = [yaml_header(card, licence, root_configs(folder))]
    counts = ", ".join(f"{k} {v:,}" for k, v in card["counts"].items())
    body = [f"# {card['name']} {card['version']}", "",
            f"A multi-label image dataset with partial labels, built by mlrpl from the {fmt or 'raw'} release: "
            f"{card['num_classes']} classes, {counts} images. Labels: 1 present, -1 absent, 0 unknown.", "",
            f"Fingerprint (sha256 of the canonical content): `{card['fingerprint']}`", "",
            "## Files", "",
            "- `dataset.json`, `categories.parquet`, `images.parquet`: the manifest (full labels; image paths relative "
            "to the raw release's root)",
            "- `masks/<scheme>-p<proportion>-s<seed>.parquet` (+ `.json`): partial labels, joined by key; "
            "`masks/README.md` declares each as a config: `datasets.load_dataset(\"DIR/masks\", \"<mask>\")`",
            "- `shards/<split>-NNNNNN.tar`: WebDataset shards (`<key>.jpg` + `<key>.json`), listed with their sha256 in "
            "`shards/index.json` and `shards/SHA256SUMS`",
            "- `files.json`: every other file with its sha256 (`mlrpl pull` checks them; `mlrpl verify` checks it all)", "",
            *[line for w in card.get("warnings", []) for line in (f"Warning: {w}", "")],
            "## Source archives", ""]
    body += [f"- `{s['file']}`: sha256 `{s['sha256']}`, {s['bytes']:,} bytes" for s in card.get("sources", [])] or ["- (none recorded)"]
    body += ["", "## Masks", ""]
    if masks:
        body += ["| mask | split | images | known | known + | classes without a known positive |", "|---|---|---|---|---|---|"]
        for m in masks:
            st = m["stats"]
            body.append(f"| {m['name']} | {m['split']} | {st['images']:,} | {st['known_proportion']:.3f} | "
                        f"{st['known_positives']:,} | {len(st['classes_without_known_positive'])} |")
    else:
        body.append("None yet (`mlrpl make-masks DIR --proportion 0.3`).")
    if index:
        body += ["", f"Shards: {len(index['shards'])} ({', '.join(f'{k} {v:,} samples' for k, v in index['splits'].items())})"
                 + (f"; {len(index['skipped'])} bad image(s) left out (listed in shards/index.json)." if index["skipped"] else ".")]
    body += ["", "## Licence", "", licence_text, "", "## Citation", ""]
    if citation:
        body.append(f"- The dataset: {citation}")
    body += [f"- The method this toolkit trains: {PAPER}",
             f"- The toolkit: mlrpl {card.get('mlrpl_version', '')}, multi-label recognition with partial labels."]
    return "\n".join(head + [""] + body) + "\n"


def masks_card(folder) -> str | None:
    """masks/README.md's text for a folder.DatasetFolder: a config per mask it holds (None when it holds
    none). Raises BadInputError when dataset.json is damaged."""
    masks = folder.mask_sidecars(skip_bad=True)
    if not masks:
        return None
    card = folder.card
    fmt = card.get("options", {}).get("format", "")
    licence = source_terms(fmt, card["name"])[0]
    body = [f"# {card['name']} {card['version']}: partial-label masks", "",
            f"Each config is one mask: a Parquet file with a row per image of its split, `key` (the image's key in "
            f"the shards and `images.parquet`) and `labels` ({card['num_classes']} int8 in class order: 1 known "
            f"positive, -1 known negative, 0 unknown); its sidecar `<mask>.json` holds its seed, fingerprint and "
            f"stats. The dataset, its licence and citation: `../README.md`."]
    return "\n".join([yaml_header(card, licence, mask_configs(masks)), ""] + body) + "\n"
