"""What runs the model's two towers: torch (the reference) or ONNX Runtime (fp32 or int8).

Both take the same input tensors, made by open_clip's preprocessing and tokenizer, and
return float32 unit vectors; ``benchmarks/encoder.py`` measures how far the ONNX ones
are from torch's and how much faster they run.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pgclip.core.errors import ModelLoadError
from pgclip.workers.onnx_export import INPUTS, TOWERS, Export, cached_export, discard
from pgclip.workers.weights import build_torch_model, one_line, register_test_models


def unit_vectors(features: Any) -> np.ndarray:
    """Rows of a float tensor scaled to unit L2 norm, as float32 (the same step for every backend)."""
    import torch

    # Normalised in float32 even on fp16 GPUs, so stored vectors have unit norm to ~1e-7.
    return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()


class TorchRunner:
    """open_clip's own model, on any torch device."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def encode_images(self, pixels: Any) -> np.ndarray:
        return self._run(self.model.encode_image, pixels)

    def encode_texts(self, tokens: Any) -> np.ndarray:
        return self._run(self.model.encode_text, tokens)

    @staticmethod
    def _run(encode: Any, inputs: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return unit_vectors(encode(inputs))


class OnnxRunner:
    """One ONNX Runtime session per tower, on the CPU. Sessions are safe to run from several
    threads at once: a worker's model threads share them, each run on ``threads`` intra-op
    threads (with one, the run stays on the calling thread)."""

    def __init__(self, export: Export, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # the graphs are one chain: nothing runs beside it
        options.log_severity_level = 3  # errors only: its optimiser's notes are not the user's business
        self.sessions = {
            tower: onnxruntime.InferenceSession(str(export.graph(tower)), options, providers=["CPUExecutionProvider"])
            for tower in TOWERS
        }

    def encode_images(self, pixels: Any) -> np.ndarray:
        return self._run("image", pixels)

    def encode_texts(self, tokens: Any) -> np.ndarray:
        return self._run("text", tokens)

    def _run(self, tower: str, inputs: Any) -> np.ndarray:
        import torch

        (features,) = self.sessions[tower].run(None, {INPUTS[tower]: inputs.numpy()})
        return unit_vectors(torch.from_numpy(features))


def load_onnx(model_name: str, pretrained: str, weights: str, *, precision: str, threads: int) -> tuple[OnnxRunner, Any, Any]:
    """(runner, open_clip's eval transform, tokenizer) from the cached export, made first if needed.

    The torch model is built only to export: a process that finds the export holds no torch
    weights. An export that verifies but that ONNX Runtime refuses is exported again, once."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    register_test_models()

    def build() -> tuple[Any, Any]:
        model, _, tokenizer = build_torch_model(model_name, pretrained, device="cpu", precision="fp32")
        return model, tokenizer

    export = cached_export(model_name, weights, precision, build)
    try:
        runner = OnnxRunner(export, threads)
    except Exception:
        discard(export)
        export = cached_export(model_name, weights, precision, build)
        try:
            runner = OnnxRunner(export, threads)
        except Exception as exc:
            raise ModelLoadError(
                f"ONNX Runtime cannot load the {precision} export of {model_name!r} ({export.directory}): "
                f"{one_line(exc)}; PGCLIP_ENCODER=torch runs the model with torch"
            ) from exc
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in export.preprocess_cfg.items()}
    preprocess = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    return runner, preprocess, open_clip.get_tokenizer(model_name)
