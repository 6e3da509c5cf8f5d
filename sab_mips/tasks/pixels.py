"""Pixel-by-pixel image classification: ``pixels`` and ``pixels-permuted``.

An image of R×C pixels is read one pixel per step (L = R·C steps, 784 for Fashion-MNIST), in row-major
order (``pixels``) or in a fixed random order (``pixels-permuted``), each pixel normalised to the training
split's zero mean and unit variance (``images.ImageData.normalise``). The class is read from the output of
the last step: the whole image must be carried to the end of the sequence, so credit for an early pixel
reaches it only through 784 steps of recurrence (full BPTT), a truncated window (truncated BPTT), or SAB's
skip connections. Pooling the outputs over the steps would give early pixels a short path to the loss and
hide exactly what the task measures. The permutation destroys locality: neighbouring pixels of the image
lie far apart in the sequence.

x: (B, L, 1) float32; y: (B,) int64 classes. Loss: cross-entropy at the last step. Metrics: ``loss`` and
``accuracy`` (the primary one).

**Data** (``images``): Fashion-MNIST by default, or any directory of MNIST-layout IDX files (``data``).
Training batch i draws B images of the training split uniformly with replacement from the generator of
(seed, i); an epoch is len(train) / B updates. Evaluation reads its held-out split in order: batch j is
images [j·B, (j+1)·B) of the validation split (``held_out("test")``: of the test split).

**Permutation** (``pixel_order``): a Fisher–Yates shuffle driven by splitmix64 from ``permutation_seed``
(default 0). It is written out here, not drawn from a library generator, so the order a run was trained
with is a function of the seed saved in its config alone, whatever the torch or numpy version.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..images import DEFAULT_DATASET, ImageData, dataset_directory, load_images
from .base import Task

MASK64 = (1 << 64) - 1


def splitmix64(state: int) -> tuple[int, int]:
    """One step of splitmix64 (Steele, Lea & Flood 2014): (next state, 64-bit output)."""
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


def pixel_order(count: int, permutation_seed: int | None) -> torch.Tensor:
    """The order in which ``count`` pixels are read: 0 … count − 1 (None), or a permutation of them that
    depends only on ``permutation_seed``. (count,) int64; step t reads pixel ``order[t]`` (row-major index)."""
    order = list(range(count))
    if permutation_seed is not None:
        state = permutation_seed & MASK64
        for i in range(count - 1, 0, -1):  # Fisher–Yates; the modulo bias of 2^64 mod (i + 1) is ~1e-16
            state, draw = splitmix64(state)
            j = draw % (i + 1)
            order[i], order[j] = order[j], order[i]
    return torch.tensor(order, dtype=torch.long)


@functools.lru_cache(maxsize=4)
def _cached_images(source: str, directory: str) -> ImageData:
    return load_images(source)


def cached_images(source: str) -> ImageData:
    """``load_images``, once per source and directory in a process (a run builds its task more than once)."""
    return _cached_images(source, str(dataset_directory(source).resolve()))


class PixelTask(Task):
    """Classify an image read one pixel per step (see the module's docstring).

    Example (with a directory of IDX files):
        >>> task = PixelTask("pixels-permuted", permuted=True, data="path/to/idx")
        >>> x, y = task.make_batch(task.min_T, 4, torch.Generator().manual_seed(0))   # (4, 784, 1), (4,)
    """

    input_size = 1
    primary = "accuracy"
    higher_is_better = True
    scored_steps = 1

    def __init__(self, name: str, permuted: bool, data: str | None = None, permutation_seed: int = 0,
                 eval_split: str = "valid") -> None:
        self.name = name
        self.permuted = permuted
        self.data = data if data is not None else DEFAULT_DATASET
        self.permutation_seed = permutation_seed
        self.eval_split = eval_split
        order = "a fixed random order" if permuted else "row-major order"
        self.describe = (f"{name}: classify an image (Fashion-MNIST, or --data DIR of IDX files) read one pixel per "
                         f"step in {order}; accuracy of the class read at the last step")

    @property
    def images(self) -> ImageData:
        return cached_images(self.data)

    @property
    def output_size(self) -> int:  # type: ignore[override]
        return self.images.classes

    @property
    def min_T(self) -> int:  # type: ignore[override]
        return self.images.pixel_count

    @functools.cached_property
    def order(self) -> torch.Tensor:
        return pixel_order(self.images.pixel_count, self.permutation_seed if self.permuted else None)

    def held_out(self, split: str) -> "PixelTask":
        """The same task evaluated on ``split`` (valid or test)."""
        if split not in ("valid", "test"):
            raise UserError(f"held-out split must be valid or test, got {split!r}")
        return PixelTask(self.name, self.permuted, self.data, self.permutation_seed, eval_split=split)

    def check_T(self, T: int) -> None:
        pixels = self.images.pixel_count
        if T != pixels:
            rows, cols = self.images.shape
            raise UserError(f"task '{self.name}' reads every pixel of a {rows}x{cols} image: T must be {pixels}, "
                            f"got {T!r} (leave --T out)")

    def seq_len(self, T: int) -> int:
        return self.images.pixel_count

    def _batch(self, pixels: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images.normalise(pixels[:, self.order]).unsqueeze(-1)  # (B, L, 1)
        return x, labels

    def make_batch(self, T: int, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_T(T)
        train = self.images.splits["train"]
        rows = torch.randint(len(train), (batch_size,), generator=generator)
        return self._batch(train.pixels[rows], train.labels[rows])

    def eval_batch(self, T: int, batch_size: int, index: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_T(T)
        split = self.images.splits[self.eval_split]
        start = index * batch_size
        if not 0 <= start < len(split):
            raise UserError(f"evaluation batch {index} of {batch_size} images lies past the {len(split)} images of "
                            f"the {self.eval_split} split")
        stop = min(start + batch_size, len(split))
        return self._batch(split.pixels[start:stop], split.labels[start:stop])

    def eval_batches(self, batch_size: int) -> int:
        return math.ceil(len(self.images.splits[self.eval_split]) / batch_size)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits[:, -1], y)

    def chunk_loss(self, logits: torch.Tensor, y: torch.Tensor, start: int, steps: int) -> torch.Tensor:
        if start + logits.shape[1] < steps:  # only the last step is scored
            return logits.new_zeros(())
        return self.loss(logits, y)

    def metrics(self, logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        last = logits[:, -1]
        return {"loss": F.cross_entropy(last, y).item(), "accuracy": (last.argmax(-1) == y).float().mean().item()}
