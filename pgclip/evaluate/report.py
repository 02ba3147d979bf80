"""Output: the text tables printed by ``pgclip eval`` and the ``--report`` Markdown file with its PNG plot."""

from __future__ import annotations

import json
from pathlib import Path

from pgclip.core.errors import InvalidInput, PgclipError
from pgclip.evaluate.captions import CaptionResult
from pgclip.evaluate.classes import ClassResult
from pgclip.evaluate.common import CAPTION_TOP, CLASS_K, PAPER_CAPTIONS, PAPER_CLASSES, SET_KEY


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def caption_table(result: CaptionResult) -> list[str]:
    recall, image_recall = result.recall, result.image_recall
    tops = [K for K in CAPTION_TOP if K <= result.k]
    changes = result.set_changes
    lines = [
        f"evaluation set {result.set_name!r} (metadata {SET_KEY}), model {result.model}: {len(result.queries)} images "
        f"sampled (seed {result.seed}) from {result.candidates} "
        + ("manifest images found in the folder" if result.ingested is not None else "embedded manifest images")
        + (f" matching {json.dumps(result.filters)}" if result.filters else ""),
    ]
    if changes:
        lines.append(f"set membership: {changes.get('added', 0)} tagged, {changes.get('moved', 0)} moved from another "
                     f"set, {changes.get('removed', 0)} earlier members untagged")
    lines += [
        "",
        f"caption -> image (seed 000 protocol): the {result.caption} caption of each image queries the search, "
        f"ranked among the set's {result.corpus} images",
        f"{'':<8}{'ours':>9}{'chance':>10}   paper (CLIP + Pinecone)",
    ]
    for K in tops:
        paper = PAPER_CAPTIONS["top"].get(K)
        lines.append(f"{f'top-{K}':<8}{_pct(recall[K]):>9}{_pct(result.chance(K)):>10}   "
                     f"{_pct(paper) if paper else '-':>6}")
    lines.append(f"{'MRR@' + str(result.k):<8}{result.mrr:>9.3f}")
    lines += [
        "",
        f"image -> caption: each of {len(result.image_queries)} images ranks the set's {result.caption_corpus} "
        "captions; right when one of its own is in the top K",
        f"{'':<8}{'ours':>9}{'chance':>10}   paper",
    ]
    for K in tops:
        lines.append(f"{f'top-{K}':<8}{_pct(image_recall[K]):>9}{_pct(result.image_chance(K)):>10}   not reported")
    lines.append(f"{'MRR@' + str(result.k):<8}{result.image_mrr:>9.3f}")
    lines.append("")
    if result.ingested is not None:
        ing = result.ingested
        lines.append(f"ingested the sample: {ing['added']} added, {ing['present']} already stored, "
                     f"{ing['rejected']} rejected; {ing['not_in_folder']} manifest images not in the folder")
    lines.append(
        f"manifest: {result.manifest_images} images; {result.missing} not in the database, "
        f"{result.ambiguous} ambiguous file names, {result.not_embedded} not embedded, "
        f"{result.no_caption} without captions" + (f", {result.filtered_out} filtered out" if result.filtered_out else "")
    )
    return lines


def class_table(result: ClassResult) -> list[str]:
    lines = [
        f"leave-one-out classification (seed 003 protocol), model {result.model}",
        f"dataset {result.dataset}: {result.description}",
        f"{result.embedded} images embedded in {result.classes} classes; {len(result.queries)} queries, "
        f"each searching the dataset's other images" + (f" (seed {result.seed})" if result.limit else ""),
        "",
        f"{'':<8}{'ours':>9}{'chance':>10}{'MNIST':>10}{'CIFAR-10':>10}   (paper: CLIP-DB)",
    ]
    for k in (1, CLASS_K):
        lines.append(f"{f'top-{k}':<8}{_pct(result.top(k)):>9}{_pct(result.chance[k]):>10}"
                     f"{_pct(PAPER_CLASSES['MNIST'][k]):>10}{_pct(PAPER_CLASSES['CIFAR-10'][k]):>10}")
    notes = []
    paper = next((key for key in ("MNIST", "CIFAR-10") if result.description.startswith(f"{key} ")), None)
    if paper:  # the seed's own dataset: say how far we are from its figures
        notes.append(f"vs the paper's {paper}: " + ", ".join(
            f"top-{k} {100 * (result.top(k) - PAPER_CLASSES[paper][k]):+.1f} points" for k in (1, CLASS_K)))
    if result.skipped:
        notes.append("left out: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in result.skipped.items()))
    if result.stale_excluded:
        notes.append(f"{result.stale_excluded} images tagged {result.dataset} by an earlier run excluded")
    if result.retagged:
        notes.append(f"{result.retagged} stored images re-tagged to this dataset/class")
    if notes:
        lines.append("")
        lines.extend(notes)
    return lines


def write_report(result: CaptionResult | ClassResult, folder: Path) -> tuple[Path, Path]:
    """``report.md`` and a PNG plot (recall@K for captions, top-1/top-5 bars for classes) in ``folder``."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PgclipError("--report needs matplotlib: pip install matplotlib") from None
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInput(f"cannot create report folder {folder}: {exc.strerror or exc}") from None
    fig = Figure(figsize=(8.4, 4.2), dpi=110)
    ax = fig.add_subplot()
    if isinstance(result, CaptionResult):
        png = folder / "recall_at_k.png"
        recall = result.recall
        ks = list(recall)
        image_recall = result.image_recall
        ax.plot(ks, [100 * recall[k] for k in ks], marker="o", label=f"caption -> image, pgclip ({result.model})")
        ax.plot(ks, [100 * image_recall[k] for k in ks], marker="^", label="image -> caption, pgclip")
        paper = [(k, v) for k, v in PAPER_CAPTIONS["top"].items() if k <= result.k]
        ax.plot([k for k, _ in paper], [100 * v for _, v in paper], marker="s", linestyle="--",
                label="caption -> image, paper: CLIP + Pinecone (seed 000)")
        if result.corpus:
            ax.plot(ks, [100 * result.chance(k) for k in ks], linestyle=":", color="grey",
                    label="caption -> image, chance")
        ax.set_xlabel("K")
        ax.set_ylabel("right answer in the top K (%)")
        ax.set_xticks(ks)
        ax.set_title(f"set {result.set_name}: {len(result.queries)} images, {result.caption_corpus} captions")
        table = caption_table(result)
        misses = [q for q in result.queries if q.rank != 1][:20]
        extra = ["", "## caption -> image: queries whose image was not first (up to 20)", "",
                 "| image | caption | rank |", "| --- | --- | --- |"]
        extra += [f"| {q.key} (#{q.image_id}) | {q.caption.replace('|', '/')} | {q.rank or f'> {result.k}'} |"
                  for q in misses]
        image_misses = [q for q in result.image_queries if q.rank != 1][:20]
        extra += ["", "## image -> caption: images whose own caption was not first (up to 20)", "",
                  "| image | own captions | rank of the best |", "| --- | --- | --- |"]
        extra += [f"| {q.key} (#{q.image_id}) | {q.captions} | {q.rank} |" for q in image_misses]
        title = "pgclip eval captions"
    else:
        png = folder / "top_k.png"
        labels = ["top-1", f"top-{CLASS_K}"]
        series = [(f"pgclip: {result.dataset}", [result.top(1), result.top(CLASS_K)]),
                  ("chance", [result.chance[1], result.chance[CLASS_K]]),
                  ("paper: MNIST", [PAPER_CLASSES["MNIST"][1], PAPER_CLASSES["MNIST"][CLASS_K]]),
                  ("paper: CIFAR-10", [PAPER_CLASSES["CIFAR-10"][1], PAPER_CLASSES["CIFAR-10"][CLASS_K]])]
        width = 0.8 / len(series)
        for i, (name, values) in enumerate(series):
            ax.bar([x + i * width for x in range(len(labels))], [100 * v for v in values], width, label=name)
        ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(labels))], labels)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"leave-one-out, {result.dataset}, {len(result.queries)} queries")
        table = class_table(result)
        extra = ["", "## Per class", "", "| class | queries | top-1 | top-5 |", "| --- | --- | --- | --- |"]
        extra += [f"| {label} | {v['queries']} | {_pct(v['top1'])} | {_pct(v['top5'])} |"
                  for label, v in result.per_class().items()]
        title = "pgclip eval classes"
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)
    fig.tight_layout()
    fig.savefig(png, format="png")
    md = folder / "report.md"
    md.write_text("\n".join([f"# {title}", "", "```", *table, "```", "", f"![plot]({png.name})", *extra, ""]),
                  encoding="utf-8")
    return md, png
