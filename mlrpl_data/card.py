"""The text of a dataset folder's README.md (a Hugging Face dataset card); folder.DatasetFolder.refresh
writes it, with files.json.

README.md's YAML header follows the Hugging Face dataset-card convention: `configs:` lists the
splits (the WebDataset shards) and each mask (its Parquet file), so `datasets.load_dataset(DIR)`
finds them. Its body says what the data is, where the raw archives come from and their checksums,
the counts, the fingerprint, the masks with their stats, the licences and how to cite.

files.json lists every file of the folder other than the shards (which shards/index.json lists)
with its size and sha256: `mlrpl pull` copies and checks exactly these. Both are rewritten
whenever the manifest, a mask, the shards or the label embeddings change; neither holds a time
or a local path, so two labs with the same data write the same bytes.
"""

from __future__ import annotations

from .formats import source_terms

PAPER = ("Pu et al., Dual-Perspective Semantic-Aware Representation Blending for Multi-Label Image Recognition "
         "with Partial Labels, arXiv 2205.13092.")


def yaml_header(card: dict, licence: str, masks: list[dict], index: dict | None) -> list[str]:
    """The card's YAML header lines (between the two ---): name, licence, tags, and a `configs:` entry
    for the shards (one split each) and for each mask (Hugging Face's data_files convention)."""
    configs = []
    if index:
        splits = sorted({s["split"] for s in index["shards"]})
        configs.append({"name": "default", "files": [(sp, f"shards/{sp}-*.tar") for sp in splits]})
    for m in masks:
        split = m["split"] if m["split"] in ("train", "test") else "train"
        configs.append({"name": m["name"], "files": [(split, f"masks/{m['name']}.parquet")]})
    head = ["---", f"pretty_name: {card['name']} {card['version']} (mlrpl)", f"license: {licence}",
            "task_categories:", "- image-classification", "tags:", "- multi-label", "- partial-labels", "- mlrpl"]
    if configs:
        head.append("configs:")
        for c in configs:
            head += [f"- config_name: {c['name']}", "  data_files:"]
            for split, path in c["files"]:
                head += [f"  - split: {split}", f"    path: {path}"]
    head.append("---")
    return head


def dataset_card(folder) -> str:
    """README.md's text for a folder.DatasetFolder (passed in, not imported: folder.py calls this):
    its card, mask sidecars and shard index. Raises BadInputError when dataset.json is damaged."""
    card = folder.card
    fmt = card.get("options", {}).get("format", "")
    licence, licence_text, citation = source_terms(fmt, card["name"])  # the builder's own (formats.py)
    masks = folder.mask_sidecars(skip_bad=True)  # a damaged mask is verify's to report, not the card's
    index = folder.index
    head = yaml_header(card, licence, masks, index)
    counts = ", ".join(f"{k} {v:,}" for k, v in card["counts"].items())
    body = [f"# {card['name']} {card['version']}", "",
            f"A multi-label image dataset with partial labels, built by mlrpl from the {fmt or 'raw'} release: "
            f"{card['num_classes']} classes, {counts} images. Labels: 1 present, -1 absent, 0 unknown.", "",
            f"Fingerprint (sha256 of the canonical content): `{card['fingerprint']}`", "",
            "## Files", "",
            "- `dataset.json`, `categories.parquet`, `images.parquet`: the manifest (full labels; image paths relative "
            "to the raw release's root)",
            "- `masks/<scheme>-p<proportion>-s<seed>.parquet` (+ `.json`): partial labels, joined by key",
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
