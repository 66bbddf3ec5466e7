"""Image metrics: streaming moments, Fréchet distance and KID against direct computations, the digits classifier
and its cache, the Inception plumbing (with a random network), and `diffprop evaluate` on images."""
import json
import shutil
import sys

import numpy as np
import pytest
import torch

from diffprop.cli import main
from diffprop.data import load_dataset
from diffprop.errors import DiffpropError
from diffprop.metrics import inception
from diffprop.metrics.digits_classifier import digits_split, load_digits_classifier, train_digits_classifier
from diffprop.metrics.features import get_extractor
from diffprop.metrics.frechet import frechet_distance
from diffprop.metrics.images import image_metrics
from diffprop.metrics.kid import jackknife_se, kid, polynomial_kernel
from diffprop.metrics.precision_recall import precision_recall
from diffprop.metrics.stats import StreamingMoments


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _fd_numpy(mu1, s1, mu2, s2):
    """``||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr (S1^1/2 S2 S1^1/2)^1/2`` through symmetric eigendecompositions."""
    w, v = np.linalg.eigh(s1)
    r1 = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(r1 @ s2 @ r1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


# ---- streaming moments -----------------------------------------------------------------------------------------

def test_streaming_moments_match_numpy_across_uneven_batches():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(271, 5)) * [1, 2, 3, 0.1, 5] + 1e4  # a large offset: naive sums would lose digits
    m = StreamingMoments()
    for lo, hi in [(0, 1), (1, 8), (8, 58), (58, 258), (258, 271)]:
        m.update(torch.from_numpy(x[lo:hi]))
    assert m.n == 271
    np.testing.assert_allclose(m.mean.numpy(), x.mean(0), rtol=1e-13)
    np.testing.assert_allclose(m.cov.numpy(), np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)


def test_streaming_moments_errors():
    m = StreamingMoments().update(torch.zeros(1, 3))
    with pytest.raises(DiffpropError, match="at least 2 feature vectors"):
        m.cov
    with pytest.raises(DiffpropError, match="dimension 4, earlier batches 3"):
        m.update(torch.zeros(2, 4))


# ---- Fréchet distance ------------------------------------------------------------------------------------------

def test_frechet_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(1)
    mu1, mu2, a, b = rng.normal(size=6), rng.normal(size=6), rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance(mu1, np.diag(a), mu1, np.diag(a)) == pytest.approx(0, abs=1e-12)


def test_frechet_matches_numpy_on_random_gaussians():
    rng = np.random.default_rng(2)
    d = 12
    mu1, mu2, s1, s2 = rng.normal(size=d), rng.normal(size=d) + 0.5, _spd(rng, d), _spd(rng, d)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_fd_numpy(mu1, s1, mu2, s2), rel=1e-10)
    # from samples, through streaming moments: equal to numpy on the same samples, near the population value
    x = rng.multivariate_normal(mu1, s1, size=20000)
    y = rng.multivariate_normal(mu2, s2, size=20000)
    mx, my = StreamingMoments(), StreamingMoments()
    for i in range(0, 20000, 3000):
        mx.update(torch.from_numpy(x[i:i + 3000]))
        my.update(torch.from_numpy(y[i:i + 3000]))
    got = frechet_distance(mx.mean, mx.cov, my.mean, my.cov)
    direct = _fd_numpy(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert got == pytest.approx(direct, rel=1e-9)
    assert got == pytest.approx(_fd_numpy(mu1, s1, mu2, s2), rel=0.05)


def test_frechet_guards():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(5, 10)), rng.normal(size=(6, 10))  # N < d: singular covariances
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    got = frechet_distance(x.mean(0), s1, y.mean(0), s2)
    assert np.isfinite(got) and got == pytest.approx(_fd_numpy(x.mean(0), s1, y.mean(0), s2), rel=1e-3)
    for s1 in (np.diag([1.0, -4.0]), np.array([[1.0, 0, 0], [0, 0, 1], [0, 1, 0]])):  # not covariances
        with pytest.raises(DiffpropError, match=r"S1 is not positive semi-definite \(its pivoted Cholesky factor misses "
                                                r"it by [14]\), so not a covariance"):
            frechet_distance(np.zeros(len(s1)), s1, np.zeros(len(s1)), np.eye(len(s1)))
    with pytest.raises(DiffpropError, match=r"S1 S2 has an eigenvalue of -0.5 \(largest 2\): S2 is not positive"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.diag([2.0, -0.5]))
    assert frechet_distance(np.ones(2), np.zeros((2, 2)), np.zeros(2), np.diag([4.0, 9.0])) == pytest.approx(15.0)
    with pytest.raises(DiffpropError, match="shapes do not match"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(DiffpropError, match="NaN or inf"):
        frechet_distance(np.array([np.nan, 0]), np.eye(2), np.zeros(2), np.eye(2))


# ---- KID -------------------------------------------------------------------------------------------------------

def test_kid_equals_the_direct_unbiased_estimate():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 5, generator=g, dtype=torch.float64), torch.randn(40, 5, generator=g, dtype=torch.float64)
    k = lambda a, b: (a @ b.T / 5 + 1) ** 3  # noqa: E731
    off = lambda K: (K.sum() - K.trace()) / (40 * 39)  # noqa: E731
    direct = off(k(x, x)) + off(k(y, y)) - 2 * k(x, y).mean()
    out = kid(x, y)
    assert out["kid"] == pytest.approx(float(direct), rel=1e-12)
    assert out["kid_subset_size"] == 40 and out["kid_subsets"] == 1 and out["kid_std"] == 0
    assert torch.allclose(polynomial_kernel(x, y), k(x, y))


def test_kid_jackknife_equals_brute_force_leave_one_out():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64) + 1
    u = lambda a, b: float(  # noqa: E731
        ((polynomial_kernel(a, a).sum() - polynomial_kernel(a, a).trace()) / (len(a) * (len(a) - 1)))
        + ((polynomial_kernel(b, b).sum() - polynomial_kernel(b, b).trace()) / (len(b) * (len(b) - 1)))
        - 2 * polynomial_kernel(a, b).mean())
    ux = np.array([u(torch.cat([x[:i], x[i + 1:]]), y) for i in range(7)])
    uy = np.array([u(x, torch.cat([y[:j], y[j + 1:]])) for j in range(6)])
    var = 6 / 7 * ((ux - ux.mean()) ** 2).sum() + 5 / 6 * ((uy - uy.mean()) ** 2).sum()
    assert jackknife_se(x, y) == pytest.approx(np.sqrt(var), rel=1e-10)


def test_kid_is_unbiased_and_separates_distributions():
    g = torch.Generator().manual_seed(2)
    draw = lambda shift: (torch.randn(60, 8, generator=g, dtype=torch.float64) * (1 + shift) + shift)  # noqa: E731
    same = torch.tensor([kid(draw(0), draw(0))["kid"] for _ in range(300)])
    assert abs(same.mean()) < 3 * same.std() / np.sqrt(len(same))  # averages to zero: unbiased
    assert (same < 0).any()  # an unbiased estimator of a zero MMD must go negative
    diff = [kid(draw(0), draw(0.3)) for _ in range(30)]
    values = torch.tensor([d["kid"] for d in diff])
    assert values.mean() > 10 * values.std() / np.sqrt(len(values))
    se = np.mean([d["kid_se"] for d in diff])
    assert 0.5 < se / values.std() < 2  # the jackknife standard error matches the spread over draws


def test_kid_over_subsets():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(150, 4, generator=g), torch.randn(120, 4, generator=g)
    out = kid(x, y, num_subsets=20, subset_size=50)
    assert out["kid_subsets"] == 20 and out["kid_subset_size"] == 50 and out["kid_std"] > 0
    assert kid(x, y, num_subsets=20, subset_size=50) == out  # seeded
    with pytest.raises(DiffpropError, match="at least 3"):
        kid(x[:2], y)


# ---- extractors ------------------------------------------------------------------------------------------------

def test_pixel_and_random_projection_extractors():
    x = torch.rand(10, 1, 8, 8) * 2 - 1
    px = get_extractor("pixels", (1, 8, 8))
    assert px.weights_hash is None and px.dim == 64
    assert torch.equal(px(x), x.reshape(10, -1).double())
    rp = get_extractor("random-projection", (1, 8, 8), dim=16, batch_size=3)
    f = rp(x)
    assert f.shape == (10, 16) and f.dtype == torch.float64
    assert rp.weights_hash == get_extractor("random-projection", (1, 8, 8), dim=16).weights_hash
    assert rp.weights_hash != get_extractor("random-projection", (1, 8, 8), dim=16, seed=1).weights_hash
    assert torch.allclose(f, get_extractor("random-projection", (1, 8, 8), dim=16, batch_size=100)(x))
    with pytest.raises(DiffpropError, match="unknown feature extractor 'vgg'; allowed: digits-classifier"):
        get_extractor("vgg", (1, 8, 8))
    with pytest.raises(DiffpropError, match="need image data"):
        get_extractor("pixels", (2,))
    with pytest.raises(DiffpropError, match="unknown pixels option 'dim'; allowed: batch_size"):
        get_extractor("pixels", (1, 8, 8), dim=3)


@pytest.fixture(scope="session")
def classifier_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffprop-cache")
    load_digits_classifier(root, progress=False)
    return root


def test_digits_classifier_accuracy_and_cache(classifier_cache, tmp_path):
    model, record = load_digits_classifier(classifier_cache)  # from the cache: no training
    assert record["test_accuracy"] >= 0.97
    _, _, x_te, y_te = digits_split()
    assert len(x_te) == 359
    assert float((model(x_te).argmax(1) == y_te).double().mean()) == pytest.approx(record["test_accuracy"])
    ext = get_extractor(None, (1, 8, 8), dataset_name="digits", cache_dir=classifier_cache)
    assert ext.name == "digits-classifier" and ext.weights_hash == record["sha256"] and ext.dim == 128
    assert ext(x_te[:5]).shape == (5, 128)
    # a tampered cache file is refused, in one line
    shutil.copytree(classifier_cache, tmp_path / "c")
    weights = next((tmp_path / "c").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(DiffpropError, match=r"SHA-256 .* differs from .*; delete both files to retrain") as e:
        load_digits_classifier(tmp_path / "c")
    assert "\n" not in str(e.value)
    with pytest.raises(DiffpropError, match="take 1x8x8 digits images"):
        get_extractor("digits-classifier", (3, 32, 32), cache_dir=classifier_cache)


def test_digits_classifier_training_is_deterministic():
    (a, acc_a), (b, acc_b) = train_digits_classifier(epochs=1), train_digits_classifier(epochs=1)
    assert acc_a == acc_b and all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


class _FakeInception(torch.nn.Module):
    """torch-fidelity's interface: uint8 (N, 3, H, W) in, a tuple with (N, 2048) features out."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 2048)
        self.calls = []

    def forward(self, x):
        self.calls.append(x.clone())
        return (self.proj(x.float().mean((2, 3)) / 255),)


def test_inception_plumbing_with_a_fake_network():
    net = _FakeInception()
    ext = inception.inception_extractor((1, 8, 8), network=net)
    ext.batch_size = 2
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    x[0, 0, 0, :3] = torch.tensor([-1.0, 0.0, 1.0])
    f = ext(x)
    assert f.shape == (5, 2048) and f.dtype == torch.float64 and ext.dim == 2048
    assert [len(c) for c in net.calls] == [2, 2, 1]
    first = net.calls[0]
    assert first.dtype == torch.uint8 and first.shape == (2, 3, 8, 8)
    assert first[0, :, 0, :3].tolist() == [[0, 128, 255]] * 3  # [-1, 1] -> 0..255, gray -> three equal channels
    assert "uint8" in ext.preprocessing and len(ext.weights_hash) == 64
    with pytest.raises(DiffpropError, match="1- or 3-channel"):
        inception.inception_extractor((2, 8, 8), network=net)


def test_inception_with_torch_fidelity_random_network():
    _require_torch_fidelity()
    ext = inception.inception_extractor((1, 8, 8), seed=0)
    assert "RANDOM weights" in ext.preprocessing
    digits = load_dataset("digits").x[:3]
    f = ext(digits)  # 8x8 gray, resized to 299 inside torch-fidelity
    assert f.shape == (3, 2048) and torch.isfinite(f).all() and f.abs().sum() > 0
    ext.batch_size = 1
    assert torch.allclose(ext(digits), f)  # batching does not change features (eval mode)
    rgb = inception.inception_extractor((3, 32, 32), seed=0)
    assert rgb.weights_hash == ext.weights_hash
    assert torch.allclose(rgb(digits.expand(-1, 3, -1, -1)), f)  # gray equals its RGB replica
    assert rgb(torch.zeros(2, 3, 32, 32)).shape == (2, 2048)


def _require_torch_fidelity():
    try:
        inception._import_inception_module()
    except DiffpropError:
        pytest.skip("torch-fidelity is not installed")


def test_inception_weights_are_checked_and_loaded_safely(tmp_path, monkeypatch):
    with pytest.raises(DiffpropError, match=r"nope\.pth: Inception weights file not found .*never downloads"):
        inception.load_fid_weights(tmp_path / "nope.pth")
    fake = tmp_path / "fake.pth"
    torch.save({"w": torch.zeros(2)}, fake)
    with pytest.raises(DiffpropError, match=r"fake\.pth: SHA-256 .* is not that of the FID Inception weights"):
        inception.load_fid_weights(fake)
    # a file with the expected hash is still read with weights_only: a pickled callable is refused
    evil = tmp_path / "evil.pth"
    torch.save({"w": _Boom()}, evil)
    monkeypatch.setattr(inception, "FID_WEIGHTS_SHA256", __import__("hashlib").sha256(evil.read_bytes()).hexdigest())
    with pytest.raises(DiffpropError, match="cannot load the weights safely"):
        inception.load_fid_weights(evil)


class _Boom:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_inception_weights_load_into_the_network(tmp_path, monkeypatch):
    _require_torch_fidelity()
    state = {k: v + 0.01 for k, v in inception.inception_network(seed=1).state_dict().items()}
    path = tmp_path / inception.FID_WEIGHTS_NAME
    torch.save(state, path)
    monkeypatch.setattr(inception, "FID_WEIGHTS_SHA256", __import__("hashlib").sha256(path.read_bytes()).hexdigest())
    ext = get_extractor("inception", (1, 8, 8), inception_weights=path)
    assert ext.weights_hash == inception.FID_WEIGHTS_SHA256 and inception.FID_WEIGHTS_NAME in ext.preprocessing
    net = inception.inception_network(state)
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    assert torch.allclose(ext(x), net(inception.to_uint8_rgb(x))[0].double())


def test_inception_missing_package_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    with pytest.raises(DiffpropError, match=r"needs the package torch-fidelity .*pip install 'diffprop\[fid\]'"):
        inception.inception_network()


def test_image_metrics_record_what_makes_them_comparable():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 1, 8, 8, generator=g) * 2 - 1, torch.rand(300, 1, 8, 8, generator=g) * 2 - 1
    out = image_metrics(x, y, get_extractor("random-projection", (1, 8, 8), dim=8), num_reference=100)
    assert {"fd", "kid", "kid_std", "kid_se", "mmd_rbf", "precision", "recall", "f1"} <= out.keys()
    assert out["num_samples"] == 40 and out["num_reference"] == 100 and out["extractor"] == "random-projection"
    assert len(out["weights_hash"]) == 64 and "Gaussian matrix" in out["preprocessing"] and "warning" not in out
    assert "biased upward" in image_metrics(x[:5], y, get_extractor("pixels", (1, 8, 8)))["warning"]
    with pytest.raises(DiffpropError, match="NaN or inf"):
        image_metrics(x * float("nan"), y, get_extractor("pixels", (1, 8, 8)))
    with pytest.raises(DiffpropError, match="at least 3 images on each side, got 0 samples"):
        image_metrics(x[:0], y, get_extractor("pixels", (1, 8, 8)))


# ---- improved precision and recall ----------------------------------------------------------------------------

def test_precision_recall_by_hand():
    # reference 0..4 with k = 1: every radius is 1, so only the sample 0.5 is inside (precision 1/4); the samples'
    # radii are 9.5 (for 0.5) and 0.5, and the ball of radius 9.5 around 0.5 holds every reference point (recall 1)
    y = torch.arange(5.0)[:, None]
    x = torch.tensor([[0.5], [10.0], [10.5], [11.0]])
    out = precision_recall(x, y, k=1)
    assert out["precision"] == 0.25 and out["recall"] == 1.0 and out["f1"] == pytest.approx(0.4)
    # swapped roles: reference radii 9.5/0.5/0.5/0.5 cover all of 0..4; sample radii 1 reach only 0.5
    out = precision_recall(y, x, k=1)
    assert out["precision"] == 1.0 and out["recall"] == 0.25


def test_precision_recall_limits():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(500, 8, generator=g)
    same = precision_recall(y.clone(), y)
    assert same["precision"] == same["recall"] == same["f1"] == 1.0
    collapsed = precision_recall(y[:1].repeat(50, 1), y)  # mode collapse: all real-looking, nothing covered
    assert collapsed["precision"] == 1.0 and collapsed["recall"] == 1 / 500
    far = precision_recall(y + 100, y)
    assert far["precision"] == far["recall"] == far["f1"] == 0.0
    fresh = precision_recall(torch.randn(500, 8, generator=g), y)  # same distribution: both high, neither perfect
    assert 0.6 < fresh["precision"] < 1 and 0.6 < fresh["recall"] < 1
    wide = precision_recall(2 * torch.randn(500, 8, generator=g), y)  # over-dispersed: precision drops, recall holds
    assert wide["precision"] < fresh["precision"] - 0.3 and wide["recall"] > 0.9
    with pytest.raises(DiffpropError, match="more than 3 points on each side, got 3 samples"):
        precision_recall(y[:3], y)


def _precision_recall_float64(x, y, k=3):
    """The definition, in float64 with full distance matrices (what torch-fidelity does in its features' dtype)."""
    x, y = x.double(), y.double()
    rx, ry = (torch.cdist(a, a).kthvalue(k + 1, dim=1).values for a in (x, y))
    return float((torch.cdist(x, y) <= ry).any(1).double().mean()), float((torch.cdist(y, x) <= rx).any(1).double().mean())


@pytest.mark.parametrize("kind", ["gaussian", "inception-like", "integers", "duplicates"])
def test_precision_recall_is_the_definition(kind):
    """The one-pass coverage (both directions from the sample-reference distances) gives the definition's result,
    exact ties (integer features) and duplicates included."""
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(700, 64, generator=g), torch.randn(600, 64, generator=g) * 1.1 + 0.05
    if kind == "inception-like":  # non-negative, far from the origin relative to their spread
        x, y = (a.relu() + 30 for a in (x, y))
    elif kind == "integers":
        x, y = (x * 2).round(), (y * 2).round()
    elif kind == "duplicates":
        x, y = torch.cat([x[:300], x[:300], y[:100]]), torch.cat([y[:200], y[:200], x[:200]])
    out = precision_recall(x, y)
    assert (out["precision"], out["recall"]) == _precision_recall_float64(x, y)
    assert 0.05 < out["precision"] < 1 and 0.05 < out["recall"] < 1


# ---- diffprop evaluate on images -------------------------------------------------------------------------------

def _samples(path, x):
    np.savez(path, samples=np.asarray(x, dtype=np.float32), meta=json.dumps({"model": "test"}))
    return path


def test_evaluate_digits_end_to_end(classifier_cache, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DIFFPROP_CACHE", str(classifier_cache))
    digits = load_dataset("digits").x.numpy()
    noise = np.random.default_rng(0).uniform(-1, 1, (400, 1, 8, 8))
    metrics = {}
    for name, x in [("data", digits[:400]), ("noise", noise)]:
        code, out, err = run(["evaluate", _samples(tmp_path / f"{name}.npz", x), "--dataset", "digits",
                              "--num-ref", 800], capsys)
        assert code == 0, err
        m = metrics[name] = json.loads((tmp_path / f"{name}.metrics.json").read_text())
        assert m["extractor"] == "digits-classifier" and m["num_samples"] == 400 and m["num_reference"] == 800
        assert len(m["weights_hash"]) == 64 and "penultimate" in m["preprocessing"] and "fd" in out
    assert metrics["noise"]["fd"] > 30 * metrics["data"]["fd"]
    assert abs(metrics["data"]["kid"]) < 3 * metrics["data"]["kid_se"]
    assert metrics["noise"]["kid"] > 10 * metrics["noise"]["kid_se"]
    assert metrics["data"]["precision"] > 0.9 and metrics["noise"]["precision"] < 0.1  # noise looks like no digit
    code, out, err = run(["evaluate", tmp_path / "data.npz", "--dataset", "digits", "--features", "pixels",
                          "--out", tmp_path / "p.json"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "p.json").read_text())["extractor"] == "pixels"
    assert metrics["data"]["out_of_range_fraction"] == 0 and "outside the data's range" not in err
    # pixels past [-1, 1] (an unclipped sampler's): scored as they are, with a one-line note saying how many
    code, out, err = run(["evaluate", _samples(tmp_path / "wide.npz", 1.5 * digits[:400]), "--dataset", "digits",
                          "--features", "pixels"], capsys)
    frac = json.loads((tmp_path / "wide.metrics.json").read_text())["out_of_range_fraction"]
    assert code == 0 and frac == pytest.approx(float((np.abs(1.5 * digits[:400]) > 1.001).mean()))
    assert err.strip().splitlines()[-1] == (f"diffprop: note: {frac:.1%} of the pixels lie outside the data's "
                                            "range [-1, 1]; they are scored as they are (clamp the samples to "
                                            "score what a picture of them shows)")


@pytest.mark.parametrize("extra, message", [
    (["--features", "vgg"], "unknown feature extractor 'vgg'; allowed: digits-classifier, inception, pixels"),
    (["--features", "inception"], "inception features need the FID Inception-v3 weights file: --inception-weights"),
    (["--inception-weights", "{tmp}/none.pth"], "none.pth: Inception weights file not found"),
    ([], "image metrics need a feature extractor: --inception-weights PATH"),
])
def test_evaluate_image_errors(extra, message, tmp_path, capsys):
    rgb = _samples(tmp_path / "rgb.npz", np.zeros((4, 3, 8, 8)))
    code, out, err = run(["evaluate", rgb, "--dataset", f"npz:{rgb}",
                          *[a.format(tmp=tmp_path) for a in extra]], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_evaluate_image_options_are_refused_on_vector_data(tmp_path, capsys):
    path = _samples(tmp_path / "g.npz", np.zeros((10, 2)))
    code, out, err = run(["evaluate", path, "--dataset", "gmm-grid", "--features", "pixels"], capsys)
    assert code == 2 and "apply to image data; gmm-grid is not" in err
