"""The encoder against open_clip's own pipeline, on the tiny seeded test model.

Random weights catch preprocessing or tokenisation mistakes as surely as real
ones: any difference in the input tensor changes the vector. These run the torch
backend (the reference); tests/unit/test_encoder_backends.py holds ONNX Runtime to it.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from pgclip.core.errors import ModelLoadError
from pgclip.workers.decode import decode
from pgclip.workers.encoder import ClipEncoder, model_dimension, pretrained_identity, register_test_models
from pgclip.workers.preprocess import SplitPreprocess
from tests.unit.test_decode import odd_images

TEXTS = [
    "a photo of a cat",
    "кошка на траве",
    "猫",
    "🐈 on the 🌱",
    "",
    "a very long caption " * 40,  # longer than the 77-token context: truncated the same way
]


@pytest.fixture(scope="module")
def encoder() -> ClipEncoder:
    enc = ClipEncoder("test-tiny", "random", device="cpu", backend="torch")
    enc.load()
    return enc


@pytest.fixture(scope="module")
def reference():
    """open_clip's own model, transform and tokenizer for test-tiny, seeded as documented."""
    register_test_models()
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("test-tiny")
    return model.eval(), preprocess, open_clip.get_tokenizer("test-tiny")


def photos() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    sizes = [(64, 64), (300, 120), (37, 211), (640, 480)]
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    return images + [decode(data) for data in odd_images().values()]


def normalised(features: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(features, dim=-1).numpy()


def test_vectors_are_unit_length_with_the_configured_dimension(encoder):
    assert encoder.dimension == model_dimension("test-tiny") == 64
    for vectors in (encoder.encode_images(photos()), encoder.encode_texts(TEXTS)):
        assert vectors.dtype == np.float32 and vectors.shape[1] == 64
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_empty_input_gives_an_empty_matrix(encoder):
    assert encoder.encode_images([]).shape == (0, 64)
    assert encoder.encode_texts([]).shape == (0, 64)


def test_image_vectors_equal_open_clips_own_pipeline(encoder, reference):
    model, preprocess, _ = reference
    images = photos()
    ours = encoder.encode_images(images)
    with torch.inference_mode():
        theirs = np.concatenate([normalised(model.encode_image(preprocess(im).unsqueeze(0))) for im in images])
    assert np.abs(ours - theirs).max() < 1e-5


def test_text_vectors_equal_open_clips_own_pipeline(encoder, reference):
    model, _, tokenizer = reference
    with torch.inference_mode():
        theirs = normalised(model.encode_text(tokenizer(TEXTS)))
    assert np.abs(encoder.encode_texts(TEXTS) - theirs).max() < 1e-5
    # Different scripts really are different inputs, not all mapped to unknown tokens.
    assert len({tuple(np.round(v, 4)) for v in theirs[:4]}) == 4


def test_prepared_images_are_8_bit_pixels_that_encode_exactly_like_open_clips_tensors(encoder):
    images = photos()
    pixels = [encoder.prepare(im) for im in images]
    assert all(isinstance(p, np.ndarray) and p.dtype == np.uint8 and p.shape == (64, 64, 3) for p in pixels)
    tensors = [encoder.preprocess(im) for im in images]  # open_clip's whole transform, per image
    assert np.array_equal(encoder.encode_prepared(pixels), encoder.encode_prepared(tensors))
    # A batch mixing the two (an image the pixel steps could not handle takes the whole transform).
    assert np.array_equal(encoder.encode_prepared([pixels[0], tensors[1]]), encoder.encode_prepared(pixels[:2]))


@pytest.mark.parametrize("backend", ["torch", "onnx", "onnx-int8"])
def test_every_backend_gets_open_clips_own_pixels_to_the_bit(backend, reference):
    _, preprocess, _ = reference
    images = photos()
    enc = ClipEncoder("test-tiny", "random", device="cpu", backend=backend)
    assert torch.equal(enc.batch([enc.prepare(im) for im in images]), torch.stack([preprocess(im) for im in images]))
    assert isinstance(enc._split, SplitPreprocess)  # the ONNX backends rebuild the transform from their export


@pytest.fixture
def torch_threads_kept():
    """Loading an encoder sets the process's torch threads; put them back for the other tests."""
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


def test_a_workers_encoder_shares_the_torch_threads_among_its_model_threads(torch_threads_kept):
    def loaded(**kwargs) -> ClipEncoder:
        enc = ClipEncoder("test-tiny", "random", device="cpu", **kwargs)
        enc.load()
        return enc

    assert loaded(torch_threads=4, model_threads=0).model_threads == 2  # auto on a CPU: two
    assert torch.get_num_threads() == 2  # each on half the budget
    assert loaded(torch_threads=1, model_threads=0).model_threads == 1  # nothing to share
    assert loaded(torch_threads=6, model_threads=3).model_threads == 3
    assert torch.get_num_threads() == 2
    assert loaded(torch_threads=4).model_threads == 1  # the default: a query gets every thread
    assert torch.get_num_threads() == 4


def test_separate_encoders_give_identical_vectors(encoder):
    other = ClipEncoder("test-tiny", "anything: test models ignore it", device="cpu", backend="torch")
    assert np.array_equal(other.encode_texts(TEXTS), encoder.encode_texts(TEXTS))
    assert np.array_equal(other.encode_images(photos()[:3]), encoder.encode_images(photos()[:3]))
    assert other.pretrained_identity == "random-seed-0"


def test_loading_a_test_model_leaves_the_callers_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ClipEncoder("test-tiny-alt", "random", device="cpu").load()
    assert torch.equal(torch.rand(3), expected)


def test_second_test_model_has_another_dimension():
    enc = ClipEncoder("test-tiny-alt", "random", device="cpu")
    assert enc.dimension == 48
    assert enc.encode_texts(["a cat"]).shape == (1, 48)


def test_dimension_needs_no_weights():
    enc = ClipEncoder("ViT-B-32", "no-such-tag")
    assert enc.dimension == 512  # read from the config: no download, no error yet


def test_unknown_model_names_how_to_list_models():
    with pytest.raises(ModelLoadError) as caught:
        model_dimension("ViT-Q-99")
    assert "ViT-Q-99" in str(caught.value) and "open_clip.list_models()" in str(caught.value)


def test_unknown_tag_lists_the_known_ones():
    with pytest.raises(ModelLoadError) as caught:
        ClipEncoder("ViT-B-32", "laion9000").load()
    message = str(caught.value)
    assert "\n" not in message
    assert "'laion9000'" in message and "'ViT-B-32'" in message and "laion2b_s34b_b79k" in message


@pytest.mark.parametrize("path", ["/nonexistent/open_clip_pytorch_model.bin", "weights.safetensors"])
def test_missing_checkpoint_file_is_named(path):
    with pytest.raises(ModelLoadError, match=f"^checkpoint file not found: {path}$"):
        ClipEncoder("ViT-B-32", path).load()


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def own_cache_dir(cache_home, monkeypatch):
    """Checkpoint digests and ONNX exports are kept under the user's cache directory: not the real one."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))


def test_pretrained_identity(tmp_path):
    checkpoint = tmp_path / "open_clip_pytorch_model.bin"
    checkpoint.write_bytes(b"weights" * 100_000)
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert pretrained_identity("ViT-B-32", str(checkpoint)) == f"sha256:{digest}"
    assert pretrained_identity("ViT-B-32", "laion2b_s34b_b79k") == "laion2b_s34b_b79k"
    assert pretrained_identity("test-tiny", str(checkpoint)) == "random-seed-0"
    # int8 vectors are a model of their own; ONNX fp32 shares torch's.
    assert pretrained_identity("ViT-B-32", "laion2b_s34b_b79k", "onnx-int8") == "laion2b_s34b_b79k+onnx-int8"
    assert pretrained_identity("test-tiny", "random", "onnx") == pretrained_identity("test-tiny", "random", "torch")


def test_a_checkpoints_digest_is_hashed_once_until_the_file_changes(tmp_path, monkeypatch):
    from pgclip.workers import weights as weights_module

    checkpoint = tmp_path / "weights.pt"
    checkpoint.write_bytes(b"a" * 300_000)
    hashed = []
    real_sha256 = hashlib.sha256
    monkeypatch.setattr(weights_module.hashlib, "sha256", lambda: hashed.append(1) or real_sha256())
    first = pretrained_identity("ViT-B-32", str(checkpoint))
    assert pretrained_identity("ViT-B-32", str(checkpoint)) == first and len(hashed) == 1
    checkpoint.write_bytes(b"b" * 300_000)  # same size, new content (and mtime)
    os.utime(checkpoint, ns=(checkpoint.stat().st_atime_ns, checkpoint.stat().st_mtime_ns + 1_000_000))
    changed = pretrained_identity("ViT-B-32", str(checkpoint))
    assert changed == f"sha256:{real_sha256(b'b' * 300_000).hexdigest()}" != first and len(hashed) == 2


def test_a_checkpoints_digest_without_a_writable_cache_is_still_right(tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")  # the cache directory cannot be created below a file
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    checkpoint = tmp_path / "weights.pt"
    checkpoint.write_bytes(b"c" * 1000)
    expected = f"sha256:{hashlib.sha256(b'c' * 1000).hexdigest()}"
    assert pretrained_identity("ViT-B-32", str(checkpoint)) == expected
    assert pretrained_identity("ViT-B-32", str(checkpoint)) == expected


def test_concurrent_loads_build_the_model_once(monkeypatch):
    calls = []
    real = open_clip.create_model_and_transforms

    def slow_create(*args, **kwargs):
        calls.append(args)
        time.sleep(0.2)  # widen the window in which a second thread could start a load too
        return real(*args, **kwargs)

    monkeypatch.setattr(open_clip, "create_model_and_transforms", slow_create)
    enc = ClipEncoder("test-tiny", "random", device="cpu", backend="torch")
    start = threading.Barrier(2)
    errors = []

    def load():
        start.wait()
        try:
            enc.load()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == [] and len(calls) == 1
    assert enc.encode_texts(["a cat"]).shape == (1, 64)


@pytest.mark.timeout(60)
def test_uncached_weights_without_network_fail_fast_with_the_fix(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub

    # Nothing cached, and the hub at a closed local port: what a machine without
    # network sees, on every machine (no 600 MB download where the hub is reachable).
    closed_port = "http://127.0.0.1:9"
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "ENDPOINT", closed_port)
    monkeypatch.setattr(hub, "HUGGINGFACE_CO_URL_TEMPLATE", closed_port + "/{repo_id}/resolve/{revision}/{filename}")
    encoder = ClipEncoder("ViT-B-32", "laion2b_s34b_b79k", device="cpu")
    with pytest.raises(ModelLoadError) as caught:
        encoder.load()  # fails fast: a retrying download would run into the test's timeout
    message = str(caught.value)
    assert "\n" not in message
    assert "'ViT-B-32'" in message and "'laion2b_s34b_b79k'" in message
    assert "set PGCLIP_PRETRAINED to a local checkpoint file" in message and "PGCLIP_MODEL=test-tiny" in message
