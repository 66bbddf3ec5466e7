"""Tests for diffprop.data: every dataset kind, determinism, and one-line errors for bad inputs."""
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from diffprop.data import DATASET_NAMES, Dataset, load_dataset
from diffprop.errors import DiffpropError


def raises(match, fn, *args, **kwargs):
    """Assert ``fn`` raises a one-line DiffpropError matching ``match``; return its message."""
    with pytest.raises(DiffpropError, match=match) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------- toy data

def test_gmm_grid_means_std_and_shape():
    ds = load_dataset("gmm-grid", num_samples=20000, seed=0)
    assert isinstance(ds, Dataset) and ds.x.shape == (20000, 2) and ds.x.dtype == torch.float32
    assert ds.data_shape == (2,) and not ds.is_image and ds.scaler is None
    means = ds.mixture.means
    assert means.shape == (49, 2)
    assert set(means[:, 0].tolist()) == set(range(-3, 4))
    x = ds.x.double()
    k = torch.cdist(x, means).argmin(1)
    assert torch.bincount(k, minlength=49).min() > 300  # every component is used
    std = (x - means[k]).std()
    assert abs(std.item() - 0.05) < 0.05 * 0.03


def test_gmm_ring_has_mixture():
    ds = load_dataset("gmm-ring", num_samples=1000)
    assert ds.x.shape == (1000, 2) and ds.mixture.num_components == 8
    assert torch.allclose(ds.mixture.means.norm(dim=1), torch.full((8,), 2.0, dtype=torch.float64))


@pytest.mark.parametrize("name", ["gmm-grid", "gmm-ring", "swiss-roll", "moons"])
def test_toy_deterministic_given_seed(name):
    a, b = (load_dataset(name, num_samples=500, seed=3).x for _ in range(2))
    c = load_dataset(name, num_samples=500, seed=4).x
    assert a.shape == (500, 2) and torch.equal(a, b) and not torch.equal(a, c)


def test_swiss_roll_and_moons_scale():
    for name in ("swiss-roll", "moons"):
        x = load_dataset(name, num_samples=5000).x
        assert x.mean(0).abs().max() < 0.5 and 0.3 < x.std(0).min() and x.std(0).max() < 1.5


def test_toy_num_samples_must_be_positive():
    raises(r"gmm-grid: num_samples must be at least 1", load_dataset, "gmm-grid", num_samples=0)


# ---------------------------------------------------------------- names

def test_dataset_names():
    assert DATASET_NAMES == ("gmm-grid", "gmm-ring", "swiss-roll", "moons", "digits",
                             "image-folder:PATH", "cifar10:PATH", "npz:PATH", "csv:PATH")


def test_unknown_name_lists_choices():
    msg = raises(r"unknown dataset 'mnist'", load_dataset, "mnist")
    assert all(n in msg for n in DATASET_NAMES)
    raises(r"unknown dataset 'moons:x'", load_dataset, "moons:x")


@pytest.mark.parametrize("prefix", ["csv", "npz", "image-folder", "cifar10"])
def test_prefix_without_path(prefix):
    raises(rf"'{prefix}:'.*path is needed", load_dataset, f"{prefix}:")


@pytest.mark.parametrize("spec", ["csv:{}/no.csv", "npz:{}/no.npz", "image-folder:{}/no", "cifar10:{}/no"])
def test_missing_path(tmp_path, spec):
    raises(r"does not exist", load_dataset, spec.format(tmp_path))


def test_file_vs_folder(tmp_path):
    (tmp_path / "f.png").write_bytes(b"")
    raises(r"is not a folder", load_dataset, f"image-folder:{tmp_path}/f.png")
    raises(r"is a folder; expected a file", load_dataset, f"csv:{tmp_path}")


def test_scaler_only_for_csv():
    raises(r"scaler applies only to csv", load_dataset, "moons", scaler={"mean": [0], "std": [1]})


# ---------------------------------------------------------------- images

def test_digits():
    ds = load_dataset("digits")
    assert ds.x.shape == (1797, 1, 8, 8) and ds.is_image and ds.data_shape == (1, 8, 8)
    assert ds.x.min() == -1 and ds.x.max() == 1
    assert load_dataset("digits", image_size=16).x.shape == (1797, 1, 16, 16)


def _png(path, mode, size, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


def test_image_folder_mixed_sizes_and_modes(tmp_path):
    _png(tmp_path / "a.png", "RGB", (10, 12), (255, 0, 128))
    _png(tmp_path / "sub" / "b.PNG", "L", (9, 9), 0)
    _png(tmp_path / "c.JPEG", "RGB", (20, 8), (0, 255, 0))
    _png(tmp_path / "d.png", "RGBA", (16, 16), (0, 0, 255, 0))
    (tmp_path / "notes.txt").write_text("ignored")
    ds = load_dataset(f"image-folder:{tmp_path}", image_size=8)
    assert ds.x.shape == (4, 3, 8, 8) and ds.is_image and ds.x.dtype == torch.float32
    assert ds.x.min() >= -1 and ds.x.max() <= 1
    assert torch.allclose(ds.x[0, :, 4, 4], torch.tensor([1.0, -1.0, 128 / 127.5 - 1]), atol=1e-6)  # a.png first
    assert ds.x[1, 1].mean() > 0.9 and ds.x[1, 0].mean() < -0.9  # c.JPEG: green
    assert torch.allclose(ds.x[2], torch.tensor([-1.0, -1.0, 1.0])[:, None, None])  # d.png: alpha dropped
    assert torch.allclose(ds.x[3], torch.tensor(-1.0))  # sub/b.PNG: black, converted to RGB


def test_image_folder_default_size_and_channels(tmp_path):
    _png(tmp_path / "a.png", "L", (6, 9), 255)  # shorter side 6 -> 6x6, one channel
    _png(tmp_path / "b.png", "RGB", (12, 12), (0, 0, 0))
    _png(tmp_path / "c.png", "LA", (7, 7), (0, 0))
    x = load_dataset(f"image-folder:{tmp_path}").x
    assert x.shape == (3, 1, 6, 6) and x[0].min() == 1 and x[1].max() == -1
    _png(tmp_path / "0.png", "RGBA", (4, 4), (1, 2, 3, 4))
    assert load_dataset(f"image-folder:{tmp_path}").x.shape == (4, 4, 4, 4)


def test_image_folder_empty(tmp_path):
    (tmp_path / "x.txt").write_text("no images")
    raises(r"no PNG/JPEG images found", load_dataset, f"image-folder:{tmp_path}")


def test_image_folder_corrupt_file_is_named(tmp_path):
    _png(tmp_path / "a.png", "RGB", (8, 8), (0, 0, 0))
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    raises(r"bad\.jpg: cannot read image", load_dataset, f"image-folder:{tmp_path}")


def _cifar_dir(root, protocol=None, n=4):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        data = np.full((n, 3072), 50 * (i - 1), dtype=np.uint8)
        with open(root / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": data, b"labels": [i] * n}, f, protocol=protocol)
    return root


@pytest.mark.parametrize("protocol", [2, None, 5])
def test_cifar10_loads(tmp_path, protocol):
    root = _cifar_dir(tmp_path / "cifar-10-batches-py", protocol)
    ds = load_dataset(f"cifar10:{root}")
    assert ds.x.shape == (20, 3, 32, 32) and ds.is_image
    assert ds.x[0].max() == -1 and ds.x[-1].min() == 200 / 127.5 - 1
    assert load_dataset(f"cifar10:{tmp_path}").x.shape == (20, 3, 32, 32)  # parent folder works too
    assert load_dataset(f"cifar10:{root}", image_size=16).x.shape == (20, 3, 16, 16)


def test_cifar10_missing_batches(tmp_path):
    root = _cifar_dir(tmp_path / "c")
    os.remove(root / "data_batch_3")
    raises(r"missing CIFAR-10 batch file\(s\) data_batch_3", load_dataset, f"cifar10:{root}")


def test_cifar10_invalid_pickle(tmp_path):
    root = _cifar_dir(tmp_path / "c")
    (root / "data_batch_2").write_bytes(b"garbage")
    raises(r"data_batch_2: not a valid CIFAR-10 batch pickle", load_dataset, f"cifar10:{root}")


def test_cifar10_wrong_shape(tmp_path):
    root = _cifar_dir(tmp_path / "c")
    with open(root / "data_batch_4", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8)}, f)
    raises(r"data_batch_4: expected .*shape \(n, 3072\).*\(4, 100\)", load_dataset, f"cifar10:{root}")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo hacked > {self.marker}",))


def test_cifar10_malicious_pickle_not_executed(tmp_path):
    root = _cifar_dir(tmp_path / "c")
    marker = tmp_path / "hacked"
    with open(root / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Evil(marker)}, f)
    raises(r"data_batch_1: refusing to unpickle global (posix|nt|os)\.system", load_dataset, f"cifar10:{root}")
    assert not marker.exists()


# ---------------------------------------------------------------- npz

def test_npz_round_trip(tmp_path):
    vec = np.random.default_rng(0).normal(size=(10, 3))
    np.savez(tmp_path / "v.npz", samples=vec, other=np.zeros(2))
    ds = load_dataset(f"npz:{tmp_path}/v.npz")
    assert ds.data_shape == (3,) and not ds.is_image and ds.x.dtype == torch.float32
    assert torch.allclose(ds.x, torch.from_numpy(vec).float())
    img = np.random.default_rng(1).uniform(-1, 1, size=(5, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "i.npz", x=img)
    ds = load_dataset(f"npz:{tmp_path}/i.npz")
    assert ds.is_image and torch.equal(ds.x, torch.from_numpy(img))
    np.savez(tmp_path / "g.npz", np.zeros((2, 5, 5)))  # single unnamed array, 3-D -> (N, 1, H, W)
    assert load_dataset(f"npz:{tmp_path}/g.npz").x.shape == (2, 1, 5, 5)


def test_npz_corrupt(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip at all")
    raises(r"bad\.npz: not a valid \.npz file", load_dataset, f"npz:{tmp_path}/bad.npz")


def test_npz_no_arrays(tmp_path):
    with zipfile.ZipFile(tmp_path / "e.npz", "w"):
        pass
    raises(r"e\.npz: the \.npz holds no arrays", load_dataset, f"npz:{tmp_path}/e.npz")


def test_npz_object_array_refused(tmp_path):
    ragged = np.empty(2, dtype=object)
    ragged[:] = [np.zeros(2), np.zeros(3)]
    np.savez(tmp_path / "o.npz", x=ragged)
    raises(r"o\.npz: array 'x' holds Python objects.*refusing to unpickle", load_dataset, f"npz:{tmp_path}/o.npz")


@pytest.mark.parametrize("shape", [(7,), (1, 2, 3, 4, 5)])
def test_npz_wrong_ndim(tmp_path, shape):
    np.savez(tmp_path / "w.npz", x=np.zeros(shape))
    raises(rf"w\.npz: array 'x' has shape \({shape[0]},", load_dataset, f"npz:{tmp_path}/w.npz")


def test_npz_ambiguous_arrays(tmp_path):
    np.savez(tmp_path / "a.npz", a=np.zeros((2, 2)), b=np.zeros((2, 2)))
    raises(r"a\.npz: no array named 'x' or 'samples'", load_dataset, f"npz:{tmp_path}/a.npz")


# ---------------------------------------------------------------- csv

def test_csv_header_standardized_and_inverted(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,c\n1,10,5\n2,20,5\n3,60,5\n\n")
    ds = load_dataset(f"csv:{tmp_path}/d.csv")
    assert ds.x.shape == (3, 3) and ds.data_shape == (3,)
    assert ds.scaler["columns"] == ["a", "b", "c"] and ds.scaler["std"][2] == 1.0
    assert torch.allclose(ds.x[:, :2].mean(0), torch.zeros(2), atol=1e-6)
    assert torch.allclose(ds.x[:, :2].std(0, unbiased=False), torch.ones(2), atol=1e-6)
    raw = torch.tensor([[1, 10, 5], [2, 20, 5], [3, 60, 5]], dtype=torch.float32)
    assert torch.allclose(ds.to_data_units(ds.x), raw)
    assert torch.allclose(ds.from_data_units(raw), ds.x)


def test_csv_reuses_given_scaler(tmp_path):
    (tmp_path / "d.csv").write_text("4,0\n6,2\n")
    ds = load_dataset(f"csv:{tmp_path}/d.csv")
    assert ds.scaler == {"columns": ["col1", "col2"], "mean": [5.0, 1.0], "std": [1.0, 1.0]}
    (tmp_path / "e.csv").write_text("5,1\n7,5\n")
    reused = load_dataset(f"csv:{tmp_path}/e.csv", scaler=ds.scaler)
    assert reused.scaler == ds.scaler
    assert torch.equal(reused.x, torch.tensor([[0.0, 0.0], [2.0, 4.0]]))
    raises(r"e\.csv: the scaler's columns", load_dataset, f"csv:{tmp_path}/e.csv",
           scaler={"columns": ["a"], "mean": [0.0], "std": [1.0]})


def test_csv_empty(tmp_path):
    (tmp_path / "e.csv").write_text("")
    raises(r"e\.csv: the CSV file has no data rows", load_dataset, f"csv:{tmp_path}/e.csv")
    (tmp_path / "h.csv").write_text("a,b\n")
    raises(r"h\.csv: the CSV file has no data rows", load_dataset, f"csv:{tmp_path}/h.csv")


def test_csv_non_numeric_column(tmp_path):
    (tmp_path / "data.csv").write_text("x,color\n1,2\n3,red\n")
    raises(r"data\.csv: column 'color' is not numeric \(value 'red' on line 3\)",
           load_dataset, f"csv:{tmp_path}/data.csv")
    (tmp_path / "nan.csv").write_text("1,nan\n")
    raises(r"nan\.csv: column 'col2' has a non-finite value", load_dataset, f"csv:{tmp_path}/nan.csv")


def test_csv_ragged_rows(tmp_path):
    (tmp_path / "r.csv").write_text("a,b\n1,2\n3\n")
    raises(r"r\.csv: line 3 has 1 fields, expected 2", load_dataset, f"csv:{tmp_path}/r.csv")
