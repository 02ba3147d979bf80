"""Output: the text tables printed by ``pgclip eval`` and the ``--report`` Markdown file with its PNG plot."""

from __future__ import annotations

import json
from pathlib import Path

from pgclip.core.errors import InvalidInput, PgclipError
from pgclip.evaluate.captions import CaptionResult
from pgclip.evaluate.classes import ClassResult
from pgclip.evaluate.common import CAPTION_TOP, CLASS_K, PAPER_CAPTIONS, PAPER_CLASSES


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def caption_table(result: CaptionResult) -> list[str]:
    recall = result.recall
    lines = [
        f"caption -> image retrieval (seed 000 protocol), model {result.model}",
        f"{len(result.queries)} queries: the {result.caption} caption of each of {len(result.queries)} images "
        f"sampled (seed {result.seed}) from {result.eligible} embedded manifest images; "
        f"ranked among {result.corpus} embedded images" + (f" matching {json.dumps(result.filters)}" if result.filters else ""),
        "",
        f"{'':<8}{'ours':>9}{'chance':>10}   paper (CLIP + Pinecone)",
    ]
    for K in CAPTION_TOP:
        if K > result.k:
            continue
        chance = min(1.0, K / result.corpus) if result.corpus else None
        paper = PAPER_CAPTIONS["top"].get(K)
        lines.append(f"{f'top-{K}':<8}{_pct(recall[K]):>9}{_pct(chance):>10}   {_pct(paper) if paper else '-':>6}")
    lines.append(f"{'MRR@' + str(result.k):<8}{result.mrr:>9.3f}")
    lines.append("")
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
        ax.plot(ks, [100 * recall[k] for k in ks], marker="o", label=f"pgclip ({result.model})")
        paper = [(k, v) for k, v in PAPER_CAPTIONS["top"].items()]
        ax.plot([k for k, _ in paper], [100 * v for _, v in paper], marker="s", linestyle="--",
                label="paper: CLIP + Pinecone (seed 000)")
        if result.corpus:
            ax.plot(ks, [100 * min(1.0, k / result.corpus) for k in ks], linestyle=":", color="grey", label="chance")
        ax.set_xlabel("K")
        ax.set_ylabel("image in the top K (%)")
        ax.set_xticks(ks)
        ax.set_title(f"caption -> image, {len(result.queries)} queries")
        table = caption_table(result)
        misses = [q for q in result.queries if q.rank != 1][:20]
        extra = ["", "## Queries whose image was not first (up to 20)", "",
                 "| image | caption | rank |", "| --- | --- | --- |"]
        extra += [f"| {q.key} (#{q.image_id}) | {q.caption.replace('|', '/')} | {q.rank or f'> {result.k}'} |"
                  for q in misses]
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
