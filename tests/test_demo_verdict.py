"""The demo's verdict: a method lowers the error (exact E_1^cumu) or raises the quality (high-quality fraction)
against ``ddpm`` only beyond the measurement's noise, each said on its own."""
from diffprop.demo import verdict
from diffprop.demo_recipes import BEST, METHODS


def _case(e1: dict, hq: dict, se: float = 0.01):
    props = {name: {"exact": {"E_1": e1[name], "E_1_se": se}} for name in METHODS}
    metrics = {name: {"high_quality_fraction": hq[name]} for name in METHODS}
    return verdict(metrics, props, n=2000)


def test_better_only_beyond_the_noise_on_each_count():
    same = {name: 0.5 for name in METHODS}
    lines, overall = _case(same, {name: 0.9 for name in METHODS})
    assert len(lines) == len(METHODS) - 1 and all("no different (0.0 SE)" in line for line in lines)
    assert overall.startswith("no regularized model lowered the exact error") and "; none raised" in overall
    # BEST: 0.1 nats lower (7.1 SE) and 0.95 against 0.90 of 2000 samples (6.0 SE): better on both
    lines, overall = _case({**same, BEST: 0.4}, {**{name: 0.9 for name in METHODS}, BEST: 0.95})
    assert overall.startswith(f"{BEST} lowered the exact error") and f"; {BEST} raised" in overall
    assert "better (7.1 SE)" in lines[-1] and "better (6.0 SE)" in lines[-1]
    # lower error but a quality within the binomial noise (0.91 vs 0.90: 1.1 SE): only the first is said
    lines, overall = _case({**same, BEST: 0.4}, {**{name: 0.9 for name in METHODS}, BEST: 0.91})
    assert overall.startswith(f"{BEST} lowered") and "; none raised" in overall and "no different (1.1 SE)" in lines[-1]
    # worse is called worse
    lines, _ = _case({**same, BEST: 0.6}, {name: 0.9 for name in METHODS})
    assert "worse (7.1 SE)" in lines[-1]
