"""The numeric tests hold under every CPU kernel choice this machine offers (see
kernel_matrix.py): default (no SIMD) and AVX2 everywhere, AVX-512 and AMX where present."""

from __future__ import annotations

import pytest

from tests.numerics.image_compare import drift
from tests.numerics.kernel_matrix import CHOICES, run_choice, table


@pytest.mark.slow
@pytest.mark.exhaustive  # make test-slow: 35 s quiet, 2 min loaded, on 2 cores
def test_numeric_tests_pass_under_every_kernel_choice() -> None:
    outcomes = [run_choice(choice, timeout_s=300) for choice in CHOICES]
    report = table(outcomes)
    print("\n" + report)  # shown with -s / -rA: the measured drift per kernel choice
    ran = [o for o in outcomes if o.ran]
    if not ran:
        pytest.skip("this CPU has no AVX2: no kernel choice to compare\n" + report)
    for outcome in ran:
        assert outcome.passed, f"{outcome.choice.name}\n{outcome.output}\n{report}"
        assert outcome.capability, outcome.output  # the interpreter really started
        seen = {m["what"] for m in outcome.measurements}
        # every drift the seed tests promise was measured under this choice
        assert "seed 41 alone vs in a batch of 3" in seen, report
    # ATen's no-SIMD loops and its AVX2 loops were really both exercised
    assert len({o.capability for o in ran}) >= min(2, len(ran)), report


def test_the_bound_separates_rounding_from_a_wrong_seed() -> None:
    """The promise on synthetic images: a few rounding flips pass, another image fails."""
    import numpy as np

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    flipped = image.copy()
    flipped.reshape(-1)[::997] ^= 0xFF  # ~0.1% of values flipped end to end (saturation)
    nudged = np.clip(image.astype(int) + rng.integers(-1, 2, image.shape), 0, 255)
    other = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    assert drift(image, flipped).same_picture()
    assert drift(image, nudged.astype(np.uint8)).same_picture()
    assert drift(image, other).other_picture()
    assert not drift(image, other).same_picture()
