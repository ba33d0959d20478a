"""Fixtures of the attack tests: small batches of known and unknown test digits in [0, 1]."""

from __future__ import annotations

import pytest

from osad.data import to_float


@pytest.fixture(scope="module")
def known_batch(digits_split0):
    known = digits_split0.test_labels >= 0
    return to_float(digits_split0.test_images[known][:64]), digits_split0.test_labels[known][:64]


@pytest.fixture(scope="module")
def unknown_batch(digits_split0):
    unknown = digits_split0.test_labels < 0
    return to_float(digits_split0.test_images[unknown][:64])
