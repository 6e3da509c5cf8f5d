"""Small generated image datasets in the MNIST file layout, so that no test needs an installed dataset."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sab_mips import images
from sab_mips.images import FILES, write_idx


def write_image_dir(directory: Path, train: int = 36, test: int = 8, rows: int = 4, cols: int = 5,
                    classes: int = 3, gz: bool = True, seed: int = 0) -> Path:
    """Write the four IDX files of a dataset whose class c lights up row c mod ``rows`` of its image (learnable,
    and a permutation of the pixels keeps it learnable); returns ``directory``."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, count in (("train", train), ("test", test)):
        labels = (np.arange(count) % classes).astype(np.uint8)
        pixels = rng.integers(0, 60, size=(count, rows, cols), dtype=np.uint8)
        pixels[np.arange(count), labels % rows, :] = 250
        image_file, label_file = FILES[split]
        write_idx(directory / f"{image_file}{suffix}", pixels)
        write_idx(directory / f"{label_file}{suffix}", labels)
    return directory


@pytest.fixture
def fashion_dir(tmp_path, monkeypatch) -> Path:
    """The named dataset ``fashion-mnist`` pointed at a generated directory (4x5 images, 3 classes)."""
    directory = write_image_dir(tmp_path / "fashion")
    named = images.DATASETS["fashion-mnist"]
    monkeypatch.setitem(images.DATASETS, "fashion-mnist",
                        images.NamedDataset(named.name, named.describe, directory, named.install))
    return directory
