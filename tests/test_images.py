"""The IDX reader and the image datasets' splits, on generated files."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from sab_mips import images
from sab_mips.errors import UserError
from sab_mips.images import load_images, read_idx, write_idx

from image_files import fashion_dir, write_image_dir  # noqa: F401  (fashion_dir is a fixture)


@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_inverts_write_idx_for_every_element_type(tmp_path, dtype, gz):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(np.dtype(dtype).newbyteorder("="))
    if dtype == "u1":
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    write_idx(path, array)
    back = read_idx(path)
    assert back.shape == (2, 3, 4) and back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


def test_read_idx_reads_the_published_byte_layout(tmp_path):
    # magic 0x00000803 (unsigned bytes, 3 dimensions), dimensions big-endian, then the values row-major
    raw = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (1).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(range(6))
    (tmp_path / "x").write_bytes(raw)
    np.testing.assert_array_equal(read_idx(tmp_path / "x"), np.arange(6).reshape(2, 1, 3))
    raw = bytes([0, 0, 0x0C, 1]) + (2).to_bytes(4, "big") + (258).to_bytes(4, "big") + (-1).to_bytes(4, "big", signed=True)
    (tmp_path / "y").write_bytes(raw)
    assert read_idx(tmp_path / "y").tolist() == [258, -1]


def test_read_idx_refuses_what_is_not_idx(tmp_path):
    (tmp_path / "text").write_text("hello world")
    with pytest.raises(UserError, match="not an IDX file"):
        read_idx(tmp_path / "text")
    raw = bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(4)
    (tmp_path / "short").write_bytes(raw)
    with pytest.raises(UserError, match="truncated.*10 values"):
        read_idx(tmp_path / "short")
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="cannot read"):
        read_idx(tmp_path / "bad.gz")


def test_splits_sizes_labels_and_normalisation(tmp_path):
    data = load_images(str(write_image_dir(tmp_path / "d", train=36, test=8, gz=False)))
    assert data.shape == (4, 5) and data.pixel_count == 20 and data.classes == 3
    assert [len(data.splits[s]) for s in ("train", "valid", "test")] == [33, 3, 8]  # valid = 36 // 12
    raw = np.concatenate([read_idx(tmp_path / "d" / "train-images-idx3-ubyte").reshape(36, 20)])
    np.testing.assert_array_equal(data.splits["train"].pixels.numpy(), raw[:33])  # train = the first images
    np.testing.assert_array_equal(data.splits["valid"].pixels.numpy(), raw[33:])  # valid = the last 1/12
    normalised = data.normalise(data.splits["train"].pixels).double()
    assert abs(normalised.mean().item()) < 1e-5 and abs(normalised.std().item() - 1) < 1e-4


def test_named_dataset_and_its_install_hint(fashion_dir, monkeypatch, tmp_path):
    assert load_images("fashion-mnist").classes == 3
    named = images.DATASETS["fashion-mnist"]
    monkeypatch.setitem(images.DATASETS, "fashion-mnist",
                        images.NamedDataset(named.name, named.describe, tmp_path / "absent", named.install))
    with pytest.raises(UserError, match="not installed.*apt-get install dataset-fashion-mnist"):
        load_images("fashion-mnist")


def test_bad_directories_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="neither a dataset name"):
        load_images(str(tmp_path / "nowhere"))
    directory = write_image_dir(tmp_path / "d")
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="lacks t10k-labels-idx1-ubyte"):
        load_images(str(directory))
    small = write_image_dir(tmp_path / "small", train=11)
    with pytest.raises(UserError, match="too few"):
        load_images(str(small))
    other = write_image_dir(tmp_path / "other")
    write_idx(other / "t10k-images-idx3-ubyte.gz", np.zeros((8, 3, 3), dtype=np.uint8))
    with pytest.raises(UserError, match="the same size"):
        load_images(str(other))
    labels = write_image_dir(tmp_path / "labels")
    write_idx(labels / "t10k-labels-idx1-ubyte.gz", np.full(8, 7, dtype=np.uint8))
    with pytest.raises(UserError, match="exceeds the training labels"):
        load_images(str(labels))
    mismatch = write_image_dir(tmp_path / "mismatch")
    write_idx(mismatch / "train-labels-idx1-ubyte.gz", np.zeros(5, dtype=np.uint8))
    with pytest.raises(UserError, match="expected 36 integer labels"):
        load_images(str(mismatch))


def test_gzip_and_plain_files_read_alike(tmp_path):
    plain = load_images(str(write_image_dir(tmp_path / "p", gz=False)))
    packed = load_images(str(write_image_dir(tmp_path / "g", gz=True)))
    for split in ("train", "valid", "test"):
        assert plain.splits[split].pixels.equal(packed.splits[split].pixels)
        assert plain.splits[split].labels.equal(packed.splits[split].labels)
    with gzip.open(tmp_path / "g" / "train-labels-idx1-ubyte.gz") as f:
        assert f.read(4) == bytes([0, 0, 8, 1])
