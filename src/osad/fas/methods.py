"""The anti-spoofing training methods (``method=``): the paper's meta-learner and its
ablations, as the configuration validates them and :mod:`osad.fas.trainer` runs them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetaMethod:
    name: str
    # "per-domain": one inner step per meta-train domain (fine-grained);
    # "aggregated": one inner step on their summed loss; "none": no meta-learning.
    inner: str
    second_order: bool
    depth: bool
    description: str

    @property
    def meta(self) -> bool:
        return self.inner != "none"


META_METHODS: dict[str, MetaMethod] = {
    m.name: m
    for m in (
        MetaMethod("rfmeta", "per-domain", True, True, "regularised fine-grained meta-learning"),
        MetaMethod(
            "rfmeta-aggregated",
            "aggregated",
            True,
            True,
            "one inner step on the summed meta-train losses (MLDG-style)",
        ),
        MetaMethod("rfmeta-first-order", "per-domain", False, True, "first-order inner steps"),
        MetaMethod("no-meta", "none", False, True, "all sources jointly, with depth"),
        MetaMethod("no-depth", "per-domain", True, False, "meta-learning without depth"),
        MetaMethod("baseline", "none", False, False, "all sources jointly, no depth"),
    )
}
