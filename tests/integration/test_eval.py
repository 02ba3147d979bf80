"""``pgclip eval`` on a real PostgreSQL: the harness finds known answers, and can fail.

An oracle encoder gives each image a known direction (read from its pixels) plus
a little noise, so the right answers are known; the searches still run through
``pgclip.db.search`` (SQL) on vectors the in-process worker stored.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pgclip import evaluate
from pgclip.cli.evaluate import add_eval_parser
from pgclip.core.errors import InvalidInput, NotFound
from pgclip.db.models import active_model
from pgclip.workers.ingest import ingest
from pgclip.workers.loop import Worker
from pgclip.workers.manifest import load_manifest

DIM = 64  # test-tiny's dimension, the active model of the fixtures' database


class Oracle:
    """Image vector = direction of the tag in pixel (0, 0)'s red value + small noise; text "thing N" = direction N."""

    model_name = "oracle"
    dimension = DIM

    def __init__(self, noise: float = 0.03) -> None:
        rng = np.random.default_rng(1234)
        self.directions = rng.normal(size=(256, DIM))
        self.directions /= np.linalg.norm(self.directions, axis=1, keepdims=True)
        self.noise = noise

    def load(self) -> None:
        pass

    def _unit(self, v: np.ndarray) -> np.ndarray:
        return (v / np.linalg.norm(v)).astype(np.float32)

    def prepare(self, image):
        return image

    def encode_prepared(self, images) -> np.ndarray:
        return self.encode_images(images)

    def encode_images(self, images) -> np.ndarray:
        out = []
        for im in images:
            tag = im.convert("RGB").getpixel((0, 0))[0]
            seed = int.from_bytes(hashlib.sha256(im.tobytes()).digest()[:8], "little")
            noise = np.random.default_rng(seed).normal(size=DIM) * self.noise
            out.append(self._unit(self.directions[tag] + noise))
        return np.stack(out) if out else np.empty((0, DIM), np.float32)

    def encode_texts(self, texts) -> np.ndarray:
        return np.stack([self._unit(self.directions[int(t.split()[-1])]) for t in texts])


def tagged_png(path: Path, tag: int, seed: int) -> Path:
    """A 32x32 PNG: pixel (0, 0) red = tag, the rest noise (every image distinct bytes)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    pixels[0, 0, 0] = tag
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")
    return path


def make_classes(root: Path, labels: list[str]) -> list[bytes]:
    """Image i gets class labels[i] as its folder; its tag (true direction) is its original class index."""
    datas = []
    for i, label in enumerate(labels):
        tag = i // 8  # 8 images per true class
        path = tagged_png(root / label / f"{i:03d}.png", tag, seed=i)
        datas.append(path.read_bytes())
    return datas


def test_oracle_classes_score_perfectly_and_shuffled_labels_score_chance(conn, db_url, tmp_path):
    oracle = Oracle()
    n_classes = 5
    labels = [f"c{i // 8}" for i in range(8 * n_classes)]
    datas = make_classes(tmp_path / "true", labels)
    # An image filed under two classes has no label; a repeat within a class counts once.
    (tmp_path / "true" / "c1" / "copy-of-000.png").write_bytes(datas[0])
    (tmp_path / "true" / "c4" / "copy-of-039.png").write_bytes(datas[39])

    result = evaluate.eval_classes(conn, db_url, oracle, evaluate.folder_dataset(tmp_path / "true"))
    assert result.skipped == {"same_image_in_two_classes": 2, "duplicate_in_class": 1}
    assert (result.classes, result.embedded, len(result.queries)) == (n_classes, 39, 39)
    assert result.top(1) >= 0.95
    assert result.top(5) == 1.0
    # Chance: class c0 kept 7 images, the others 8; a random other image shares the class.
    assert result.chance[1] == pytest.approx((7 * 6 / 38 + 32 * 7 / 38) / 39)

    # The same images (same bytes, so the same stored rows and vectors), labels shuffled.
    shuffled = labels[:]
    random.Random(7).shuffle(shuffled)
    for i, label in enumerate(shuffled):
        (tmp_path / "shuffled" / label).mkdir(parents=True, exist_ok=True)
        (tmp_path / "shuffled" / label / f"{i:03d}.png").write_bytes(datas[i])
    bad = evaluate.eval_classes(conn, db_url, oracle, evaluate.folder_dataset(tmp_path / "shuffled"))
    assert bad.retagged == 39  # every stored image moved from dataset "true" to "shuffled" (image 0 is new)
    assert len(bad.queries) == 40
    assert bad.top(1) <= 1 / n_classes + 0.15, bad.top(1)
    assert bad.top(1) < result.top(1) - 0.5

    with pytest.raises(InvalidInput, match="no usable images"):
        evaluate.eval_classes(conn, db_url, oracle, evaluate.LabeledImages("empty", tmp_path, [], "nothing"))


def test_caption_protocol_counts_exactly_one_wrong_caption(conn, db_url, tmp_path):
    oracle = Oracle()
    n = 8
    images = tmp_path / "images"
    for i in range(n):
        tagged_png(images / f"{1000 + i}.png", tag=i, seed=100 + i)
    rows = ["image_name| comment_number| comment"]
    for i in range(n):
        wrong = 5 if i == 3 else i  # image 3's first caption points at image 5
        rows += [f"{1000 + i}.png| 0| thing {wrong}", f"{1000 + i}.png| 1| thing {i}"]
    rows += ["9999.png| 0| thing 9"]  # named in the manifest, never ingested
    manifest_path = tmp_path / "elsewhere" / "results.csv"  # bare names: matched by file name
    manifest_path.parent.mkdir()
    manifest_path.write_text("\n".join(rows) + "\n")
    manifest = load_manifest(manifest_path)

    model = active_model(conn)
    conn.commit()
    report = ingest(conn, [images], model_id=model.id, manifest=manifest)
    assert report.added == n
    Worker(db_url, encoder=oracle, model=model, batch_size=16, lease_seconds=30, max_attempts=2).run(until_empty=True)

    result = evaluate.eval_captions(conn, oracle, manifest, n=500, seed=0, k=10, caption="first")
    assert (result.eligible, result.missing, result.not_embedded, result.corpus) == (n, 1, 0, n)
    assert len(result.queries) == n
    recall = result.recall
    assert recall[1] == pytest.approx((n - 1) / n)
    assert recall[10] == 1.0  # all 8 images are returned
    (miss,) = [q for q in result.queries if q.rank != 1]
    assert miss.key == "1003.png" and miss.caption == "thing 5" and miss.rank > 1

    # A seeded random caption: deterministic for a seed.
    again = evaluate.eval_captions(conn, oracle, manifest, n=4, seed=3, caption="random")
    assert [q.caption for q in again.queries] == [
        q.caption for q in evaluate.eval_captions(conn, oracle, manifest, n=4, seed=3, caption="random").queries]
    assert len(again.queries) == 4

    md, png = evaluate.write_report(result, tmp_path / "report")
    assert "top-1" in md.read_text() and "1003.png" in md.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = result.as_dict()
    assert data["top"]["1"] == pytest.approx(7 / 8) and data["paper"]["top"]["10"] == 0.94

    # Filters that leave none of the manifest's images: an error, not a 0 %.
    with pytest.raises(NotFound, match="none of the"):
        evaluate.eval_captions(conn, oracle, manifest, filters={"metadata": {"no": "such"}})


class BasisOracle(Oracle):
    """Exact vectors: an image with tag t is e_t (no noise); "thing N" is e_N, "blend A B" is 0.8 e_A + 0.6 e_B."""

    def __init__(self) -> None:
        super().__init__(noise=0.0)
        self.directions = np.zeros((256, DIM))
        self.directions[:DIM] = np.eye(DIM)

    def encode_texts(self, texts) -> np.ndarray:
        out = []
        for text in texts:
            words = text.split()
            if words[0] == "blend":
                out.append(self._unit(0.8 * self.directions[int(words[1])] + 0.6 * self.directions[int(words[2])]))
            else:
                out.append(self._unit(self.directions[int(words[-1])]))
        return np.stack(out)


# Image i (tag i) and its captions. caption -> image: image 3's first caption is nearer image 5 (0.8 against
# 0.6), image 6's nearer image 0: both rank 2. image -> caption: image 3's only caption (0.6) is beaten by
# image 4's "blend 3 4" (0.8): rank 2; image 6's two (0.6) by "blend 6 2" and "blend 6 7": rank 3.
BLENDS = {0: ["thing 0"], 1: ["thing 1"], 2: ["thing 2", "blend 6 2"], 3: ["blend 5 3"], 4: ["thing 4", "blend 3 4"],
          5: ["thing 5"], 6: ["blend 0 6", "blend 1 6"], 7: ["thing 7", "blend 6 7"]}


def eval_sets(conn) -> dict[int, dict]:
    conn.commit()
    return {row[0]: row[1] for row in conn.execute("SELECT id, metadata FROM pgclip.images ORDER BY id")}


def test_the_set_alone_is_ranked_both_ways_and_tagged_from_a_results_csv(conn, db_url, tmp_path):
    oracle = BasisOracle()
    for i in BLENDS:
        tagged_png(tmp_path / "flickr" / f"{2000 + i}.png", tag=i, seed=300 + i)
        # Another collection: the same vectors (same tags), so without the set they would tie every right image.
        tagged_png(tmp_path / "other" / f"other-{i}.png", tag=i, seed=400 + i)
    rows = ["image_name| comment_number| comment"]
    rows += [f"{2000 + i}.png| {j}| {text}" for i, texts in BLENDS.items() for j, text in enumerate(texts)]
    manifest = load_manifest(_write(tmp_path / "results.csv", "\n".join(rows) + "\n"))
    model = active_model(conn)
    conn.commit()
    ingest(conn, [tmp_path / "flickr"], model_id=model.id, manifest=manifest)
    ingest(conn, [tmp_path / "other"], model_id=model.id, manifest=None)
    Worker(db_url, encoder=oracle, model=model, batch_size=16, lease_seconds=30, max_attempts=2).run(until_empty=True)

    result = evaluate.eval_captions(conn, oracle, manifest, n=500, seed=0, k=10)
    assert (result.set_name, result.corpus, result.caption_corpus) == ("results", 8, 12)
    assert {q.key: q.rank for q in result.queries} == {f"{2000 + i}.png": 2 if i in (3, 6) else 1 for i in BLENDS}
    assert {q.key: q.rank for q in result.image_queries} == {
        f"{2000 + i}.png": {3: 2, 6: 3}.get(i, 1) for i in BLENDS}
    assert result.recall[1] == result.image_recall[1] == pytest.approx(6 / 8)
    assert result.recall[3] == result.image_recall[3] == 1.0
    assert result.image_chance(1) == pytest.approx((4 * 1 / 12 + 4 * 2 / 12) / 8)  # 4 images have 2 captions
    assert result.set_changes == {"added": 8, "moved": 0, "removed": 0}

    # The tag is metadata on the set's images only (the results.csv carries none itself); nothing else changed.
    stored = eval_sets(conn)
    tagged = [meta for meta in stored.values() if meta.get("eval_set") == "results"]
    assert len(tagged) == 8 and len(stored) == 16
    assert all("eval_set" not in meta for meta in stored.values() if meta not in tagged)

    text = "\n".join(evaluate.caption_table(result))
    assert "ranked among the set's 8 images" in text and "ranks the set's 12 captions" in text
    assert "61.0 %" in text and text.count("not reported") == 4
    data = result.as_dict()
    assert data["set"] == "results" and data["corpus"] == 8
    assert data["image_to_caption"]["top"] == {"1": 0.75, "3": 1.0, "5": 1.0, "10": 1.0}
    assert data["image_to_caption"]["paper"] == "not reported" and data["paper"]["top"]["1"] == 0.61

    # The set is named by the user's filter only through --set.
    with pytest.raises(InvalidInput, match="name it with --set"):
        evaluate.eval_captions(conn, oracle, manifest, filters={"metadata": {"eval_set": "other"}})


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_jsonl_set_is_retagged_by_each_run_and_other_metadata_stays(conn, db_url, tmp_path):
    oracle = Oracle()
    lines = []
    for i in range(6):
        tagged_png(tmp_path / "pics" / f"p{i}.png", tag=i, seed=500 + i)
        lines.append(json.dumps({"path": f"pics/p{i}.png", "captions": [f"thing {i}"], "metadata": {"album": "a"}}))
    manifest = load_manifest(_write(tmp_path / "holiday.jsonl", "\n".join(lines) + "\n"))
    model = active_model(conn)
    conn.commit()
    ingest(conn, [tmp_path / "pics"], model_id=model.id, manifest=manifest)
    Worker(db_url, encoder=oracle, model=model, batch_size=16, lease_seconds=30, max_attempts=2).run(until_empty=True)

    first = evaluate.eval_captions(conn, oracle, manifest, n=4, seed=1)
    assert (first.set_name, first.corpus, len(first.queries), first.caption_corpus) == ("holiday", 4, 4, 4)
    assert first.recall[1] == first.image_recall[1] == 1.0
    members = {q.image_id for q in first.queries}
    stored = eval_sets(conn)
    assert {i for i, meta in stored.items() if meta.get("eval_set") == "holiday"} == members
    assert all(meta["album"] == "a" for meta in stored.values())

    # A smaller sample under the same name: the set is exactly the new sample, ranked among 2.
    second = evaluate.eval_captions(conn, oracle, manifest, n=2, seed=2)
    now = {q.image_id for q in second.queries}
    assert second.corpus == 2
    assert {i for i, meta in eval_sets(conn).items() if meta.get("eval_set") == "holiday"} == now
    assert second.set_changes == {"added": len(now - members), "moved": 0, "removed": len(members - now)}

    # Another name takes its images from the first set.
    third = evaluate.eval_captions(conn, oracle, manifest, n=6, seed=0, set_name="all of them")
    assert third.corpus == 6 and third.set_changes == {"added": 4, "moved": 2, "removed": 0}
    assert {meta["eval_set"] for meta in eval_sets(conn).values()} == {"all of them"}
    assert all(meta["album"] == "a" for meta in eval_sets(conn).values())


def test_the_command_ingests_and_embeds_only_the_sample(settings, conn, tmp_path, capsys):
    rows = ["image_name| comment_number| comment"]
    for i in range(6):
        tagged_png(tmp_path / "flickr30k_images" / f"{3000 + i}.jpg", tag=i, seed=600 + i)
        rows += [f"{3000 + i}.jpg| 0| a photo number {i}", f"{3000 + i}.jpg| 1| another photo {i}"]
    rows += ["3999.jpg| 0| not in the folder"]
    manifest = _write(tmp_path / "results.csv", "\n".join(rows) + "\n")
    argv = ["eval", "captions", str(manifest), "--images", str(tmp_path / "flickr30k_images"), "--n", "4",
            "--set", "flickr-mini"]

    args = cli([*argv, "--json"])
    assert args.handler(args, settings) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["set"], data["corpus"], data["queries_run"]) == ("flickr-mini", 4, 4)
    assert data["ingested"] == {"added": 4, "present": 0, "rejected": 0, "not_in_folder": 1}
    assert data["image_to_caption"]["corpus"] == 8 and data["image_to_caption"]["queries_run"] == 4
    stored = eval_sets(conn)
    assert len(stored) == 4 and {meta["eval_set"] for meta in stored.values()} == {"flickr-mini"}
    # The 8 captions were encoded once, into the query cache the API shares.
    assert conn.execute("SELECT count(*) FROM pgclip.text_vectors").fetchone()[0] == 8

    args = cli(argv)
    assert args.handler(args, settings) == 0
    text = capsys.readouterr().out
    assert "ingested the sample: 0 added, 4 already stored" in text
    assert "set membership: 0 tagged, 0 moved from another set, 0 earlier members untagged" in text
    assert "caption -> image (seed 000 protocol)" in text and "image -> caption" in text
    assert "94.0 %" in text and "not reported" in text


def cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pgclip")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_digits_end_to_end_through_the_command_with_a_report(settings, tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    cache = tmp_path / "cache"
    args = cli(["eval", "classes", "digits", "--max-images", "40", "--limit", "30", "--cache-dir", str(cache),
                "--json", "--report", str(tmp_path / "report")])
    assert args.handler(args, settings) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["dataset"] == "digits" and data["queries_run"] == 30 and data["embedded"] == 40
    assert 0 <= data["top"]["1"] <= data["top"]["5"] <= 1
    pngs = sorted(cache.glob("digits-224-bicubic/*/*.png"))
    assert len(pngs) == 40
    with Image.open(pngs[0]) as im:
        assert im.size == (224, 224) and im.mode == "L"
    report = tmp_path / "report"
    assert "MNIST" in (report / "report.md").read_text()
    assert (report / "top_k.png").stat().st_size > 1000

    # Again: the same files, nothing new stored; the table is printed.
    args = cli(["eval", "classes", "digits", "--max-images", "40", "--limit", "5", "--cache-dir", str(cache)])
    assert args.handler(args, settings) == 0
    text = capsys.readouterr().out
    assert "top-1" in text and "93.8 %" in text and "28.0 %" in text


def test_user_mistakes_are_one_line_errors(tmp_path, settings):
    with pytest.raises(NotFound, match="no captions manifest"):
        args = cli(["eval", "captions", str(tmp_path / "missing.csv")])
        args.handler(args, settings)
    with pytest.raises(NotFound, match="no dataset"):
        args = cli(["eval", "classes", "mnist-please"])
        args.handler(args, settings)
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    with pytest.raises(InvalidInput, match="no class sub-folders with images"):
        args = cli(["eval", "classes", str(tmp_path / "empty")])
        args.handler(args, settings)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "nowhere.jpg", "captions": ["a cat"]}\n')
    with pytest.raises(NotFound, match="set m is empty: none of the 1 captioned images"):
        args = cli(["eval", "captions", str(manifest)])
        args.handler(args, settings)
    with pytest.raises(InvalidInput, match="set name must be 1 to 200 printable characters"):
        args = cli(["eval", "captions", str(manifest), "--set", " "])
        args.handler(args, settings)
    # Two stored images of that file name, neither at the manifest's path: which one is meant is
    # not known, and the message says so (it read "0 not in the database, 0 not embedded").
    from pgclip.db.engine import connect
    from tests.integration.test_schema import add_image

    with connect(settings.database_url, role="test") as conn:
        for folder in ("a", "b"):
            add_image(conn, f"/{folder}/nowhere.jpg")
        conn.commit()
    with pytest.raises(NotFound, match="1 ambiguous: several stored images have the file's name, none its path"):
        args = cli(["eval", "captions", str(manifest)])
        args.handler(args, settings)
    with pytest.raises(NotFound, match="no images folder at"):
        args = cli(["eval", "captions", str(manifest), "--images", str(tmp_path / "nowhere")])
        args.handler(args, settings)


def test_mnist_files_through_the_protocol_and_the_command(conn, db_url, settings, tmp_path, capsys):
    from tests.unit.test_eval_readers import idx

    # 30 MNIST-format digits in 3 classes; pixel (0, 0) = the class, so the oracle's neighbours share it.
    labels = np.arange(30) % 3
    images = np.random.default_rng(5).integers(0, 256, (30, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = labels
    data = tmp_path / "mnist"
    data.mkdir()
    (data / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx(2051, images)))
    (data / "t10k-labels-idx1-ubyte").write_bytes(idx(2049, labels))

    dataset = evaluate.load_dataset("mnist", cache_dir=tmp_path / "cache", data=data)
    result = evaluate.eval_classes(conn, db_url, Oracle(), dataset)
    assert (result.dataset, result.classes, result.embedded, len(result.queries)) == ("mnist-test", 3, 30, 30)
    assert result.top(1) == 1.0 and result.top(5) == 1.0
    assert result.chance[1] == pytest.approx(9 / 29)
    assert "vs the paper's MNIST: top-1 +6.2 points, top-5 +1.7 points" in evaluate.class_table(result)

    # The command: a quick run on a seeded subset, the paper's figures printed beside ours.
    args = cli(["eval", "classes", "mnist", "--data", str(data), "--max-images", "12", "--limit", "6",
                "--cache-dir", str(tmp_path / "cache2"), "--name", "mnist-quick"])
    assert args.handler(args, settings) == 0
    text = capsys.readouterr().out
    assert "dataset mnist-quick: MNIST test split (30 images" in text
    assert "12 images embedded in 3 classes; 6 queries" in text and "93.8 %" in text
    assert "vs the paper's MNIST: top-1 " in text
    assert len(list((tmp_path / "cache2").rglob("*.png"))) == 12
    with pytest.raises(InvalidInput, match="mnist needs --data DIR"):
        args = cli(["eval", "classes", "mnist"])
        args.handler(args, settings)
