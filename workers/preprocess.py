"""open_clip's eval transform, cut so that a worker's decode thread can run most of it.

The pixel steps (resize, crop, mode) run per image in the decode thread and give 8-bit
pixels; ToTensor + Normalize run on the whole batch in a model thread. Every backend
gets the floats this makes, so every backend sees the same pixels to the bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image


class SplitPreprocess:
    """open_clip's eval transform cut before its ToTensor + Normalize tail: the pixel steps run
    per image (decode thread), the tail on a whole batch (model threads), with the same operations
    in the same order as torchvision's ``to_tensor`` and ``normalize``, so the same floats."""

    def __init__(self, pixel_steps: Any, mean: Sequence[float], std: Sequence[float]) -> None:
        self.pixel_steps = pixel_steps
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    @classmethod
    def of(cls, preprocess: Any) -> SplitPreprocess | None:
        """The split of a torchvision ``Compose`` ending in ToTensor + Normalize; None for anything else."""
        from torchvision import transforms

        steps = list(getattr(preprocess, "transforms", ()))
        if len(steps) < 2 or not isinstance(preprocess, transforms.Compose):
            return None
        to_tensor, normalize = steps[-2:]
        # Exact classes: a subclass may convert differently.
        if type(to_tensor) not in _to_tensor_classes() or type(normalize) is not transforms.Normalize:
            return None
        return cls(transforms.Compose(steps[:-2]), normalize.mean, normalize.std)

    def pixels(self, image: Image.Image) -> np.ndarray | None:
        """The image after the pixel steps as (height, width, 3) uint8; None if they made something
        other than an 8-bit RGB image (the caller then runs the whole transform)."""
        out = self.pixel_steps(image)
        if not isinstance(out, Image.Image) or out.mode != "RGB":
            return None
        return np.array(out)  # a writable copy: torch.from_numpy warns about read-only arrays

    def finish(self, pixels: Any) -> Any:
        """ToTensor + Normalize of a (batch, height, width, 3) uint8 tensor: float32 (batch, 3, h, w)."""
        import torch

        x = pixels.permute(0, 3, 1, 2).contiguous().to(dtype=torch.float32).div(255)
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)


def _to_tensor_classes() -> tuple[type, ...]:
    """torchvision's ToTensor and open_clip's MaybeToTensor (which passes tensors through and
    converts images exactly like ToTensor)."""
    from torchvision.transforms import ToTensor

    try:
        from open_clip.transform import MaybeToTensor
    except ImportError:  # an open_clip from before MaybeToTensor: plain ToTensor
        return (ToTensor,)
    return (ToTensor, MaybeToTensor)
