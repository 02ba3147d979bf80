"""``pgclip eval``: retrieval quality measured through the search the API runs.

Two protocols from the papers pgclip starts from (``SEEDS.md``):

* ``captions`` (seed 000, Novi Sad, Flickr30k): sample images of a captions
  manifest as an evaluation set (metadata ``eval_set``), query with one of each
  image's captions as text among the set's images alone, and rank every caption of
  the set for each image: top-1/3/5/10 both ways. The paper reports caption ->
  image top-1/3/5/10 of 61 / 75 / 85 / 94 % with CLIP + Pinecone.
* ``classes`` (seed 003, CLIP-DB): every labeled image queries the rest of its
  dataset (leave-one-out); top-1 is right when the nearest image has the query's
  class, top-5 when the class is among the five nearest. The paper reports MNIST
  93.8 / 98.3 % and CIFAR-10 28.0 / 66.5 %.

Every query goes through :func:`pgclip.db.search.search` / :func:`similar`, i.e.
the SQL function ``pgclip.search`` in PostgreSQL with vectors from the encoder
the workers and the API use: a broken pipeline (preprocessing, normalisation,
index, filters) shows up as a bad number. There is no separate numpy path.

The core functions take a connection and an encoder object (anything with
``load``, ``encode_images``, ``encode_texts``, ``dimension`` and ``model_name``),
so tests can pass an oracle encoder whose right answers are known.

The package's modules: ``common`` (the papers' figures, limits, the encoder
interface, progress), ``captions`` and ``classes`` (the two protocols),
``datasets`` (labeled image sets for ``classes``), ``report`` (tables and the
Markdown/PNG report). The ``pgclip eval`` sub-commands live in ``pgclip.cli.evaluate``.
"""

from pgclip.evaluate.captions import CaptionQuery, CaptionResult, ImageQuery, eval_captions, match_manifest, set_name_for
from pgclip.evaluate.classes import ClassResult, eval_classes
from pgclip.evaluate.common import (
    CAPTION_TOP,
    CLASS_K,
    DEFAULT_SIZE,
    DIGITS,
    MAX_K,
    PAPER_CAPTIONS,
    PAPER_CLASSES,
    TEXT_BATCH,
    Encoder,
    Progress,
)
from pgclip.evaluate.datasets import LabeledImages, digits_dataset, folder_dataset, load_dataset
from pgclip.evaluate.report import caption_table, class_table, write_report

__all__ = [
    "CAPTION_TOP",
    "CLASS_K",
    "DEFAULT_SIZE",
    "DIGITS",
    "MAX_K",
    "PAPER_CAPTIONS",
    "PAPER_CLASSES",
    "TEXT_BATCH",
    "CaptionQuery",
    "CaptionResult",
    "ClassResult",
    "Encoder",
    "ImageQuery",
    "LabeledImages",
    "Progress",
    "caption_table",
    "class_table",
    "digits_dataset",
    "eval_captions",
    "eval_classes",
    "folder_dataset",
    "load_dataset",
    "match_manifest",
    "set_name_for",
    "write_report",
]
