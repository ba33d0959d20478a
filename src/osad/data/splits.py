"""Open-set splits: which classes are known in each split.

The CIFAR-10 table is the one of the reference protocol (6 known / 4 unknown,
5 splits); the embedded digits dataset reuses it with digits 0-9 standing for
the 10 classes.
"""

from __future__ import annotations

CIFAR10_KNOWN: tuple[tuple[int, ...], ...] = (
    (0, 1, 2, 4, 5, 9),
    (0, 3, 5, 7, 8, 9),
    (0, 1, 5, 6, 7, 8),
    (3, 4, 5, 7, 8, 9),
    (0, 1, 2, 3, 7, 8),
)


def unknown_of(known: tuple[int, ...], num_classes: int) -> tuple[int, ...]:
    """The classes of ``range(num_classes)`` that are not known."""
    known_set = set(known)
    return tuple(c for c in range(num_classes) if c not in known_set)
