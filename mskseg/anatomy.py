"""Vertebra names and order: the one table every task, writer and synthetic generator uses.

A vertebra is named by its region letter and number from the top (``"C1"`` .. ``"C7"``, ``"T1"`` .. ``"T12"``,
``"L1"`` .. ``"L5"``, ``"S1"`` for the first sacral segment, i.e. the top of the sacrum). Two transitional
vertebrae are in the table too: ``"T13"`` (a thirteenth rib-bearing vertebra) and ``"L6"`` (a sixth
lumbar-type vertebra). They sit in the cranio-caudal order (T12, T13, L1 ... L5, L6, S1) but are left out of
:func:`vertebra_names` unless asked for, since typical anatomy has neither.

Other naming schemes map onto the table:

* VerSe label values (1-7 C1-C7, 8-19 T1-T12, 20-25 L1-L6, 26 sacrum, 28 T13): :func:`vertebra_from_verse`,
  :func:`verse_label`;
* TotalSegmentator class names (``vertebrae_L3``, ``vertebrae_S1``): :func:`totalseg_name`, and
  :func:`vertebra_from_name`, which also reads ``vertebra_L3``, ``L3`` and any letter case.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

#: Region names by their letter.
REGIONS: dict[str, str] = {"C": "cervical", "T": "thoracic", "L": "lumbar", "S": "sacral"}
#: Vertebrae that exist only in transitional anatomy.
TRANSITIONAL: tuple[str, ...] = ("T13", "L6")
#: Prefix of vertebra class names in TotalSegmentator (and in MSKSeg's terminology).
TOTALSEG_PREFIX = "vertebrae_"


@dataclass(frozen=True)
class Vertebra:
    """One row of the vertebra table.

    Attributes:
        name: ``"L3"``.
        region: ``"cervical"``, ``"thoracic"``, ``"lumbar"`` or ``"sacral"``.
        number: number within the region (3 for L3).
        order: position in the cranio-caudal order of :data:`VERTEBRAE` (C1 = 0).
        carries_ribs: True for the rib-bearing vertebrae of typical anatomy (T1..T12) and for T13.
        transitional: True for T13 and L6 (absent in typical anatomy).
        verse_label: its label value in VerSe masks (None when VerSe has none).
    """

    name: str
    region: str
    number: int
    order: int
    carries_ribs: bool
    transitional: bool
    verse_label: int | None


def _build_table() -> tuple[Vertebra, ...]:
    names = ([f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 14)] + [f"L{i}" for i in range(1, 7)]
             + ["S1"])
    verse = {**{f"C{i}": i for i in range(1, 8)}, **{f"T{i}": 7 + i for i in range(1, 13)},
             **{f"L{i}": 19 + i for i in range(1, 7)}, "S1": 26, "T13": 28}
    return tuple(Vertebra(name, REGIONS[name[0]], int(name[1:]), order, name[0] == "T", name in TRANSITIONAL,
                          verse.get(name))
                 for order, name in enumerate(names))


#: Every vertebra in cranio-caudal order: C1..C7, T1..T12, T13, L1..L5, L6, S1.
VERTEBRAE: tuple[Vertebra, ...] = _build_table()
_BY_NAME: dict[str, Vertebra] = {v.name: v for v in VERTEBRAE}
_BY_VERSE: dict[int, Vertebra] = {v.verse_label: v for v in VERTEBRAE if v.verse_label is not None}
_NAME_PATTERN = re.compile(r"^(?:vertebrae?_)?([CTLS])(\d{1,2})$", re.IGNORECASE)


def vertebra(name: str) -> Vertebra:
    """The table row of a vertebra name (``"L3"``); raises KeyError for names not in the table."""
    return _BY_NAME[name]


def is_vertebra(name: str) -> bool:
    """True when ``name`` is a vertebra of the table (``"L3"``, not ``"vertebrae_L3"``)."""
    return name in _BY_NAME


def vertebra_names(first: str = "C1", last: str = "S1", *, include: Iterable[str] = ()) -> list[str]:
    """Names from ``first`` to ``last`` (both included) in cranio-caudal order.

    The transitional vertebrae (T13, L6) are left out unless named in ``include`` (or as ``first``/``last``).
    """
    wanted = set(include) | {first, last}
    lo, hi = vertebra(first).order, vertebra(last).order
    return [v.name for v in VERTEBRAE[lo: hi + 1] if not v.transitional or v.name in wanted]


def vertebra_order(name: str) -> int:
    """Cranio-caudal position of a vertebra (C1 = 0, larger is lower)."""
    return vertebra(name).order


def region_of(name: str) -> str:
    """``"cervical"``, ``"thoracic"``, ``"lumbar"`` or ``"sacral"``."""
    return vertebra(name).region


def carries_ribs(name: str) -> bool:
    """True when the vertebra carries ribs in typical anatomy (T1..T12; also T13 when present)."""
    return vertebra(name).carries_ribs


def level_above(name: str, *, include: Iterable[str] = ()) -> str | None:
    """The next vertebra towards the head (transitional ones skipped unless in ``include``); None above C1."""
    names = vertebra_names(include=set(include) | {name})
    i = names.index(name)
    return names[i - 1] if i > 0 else None


def level_below(name: str, *, include: Iterable[str] = ()) -> str | None:
    """The next vertebra towards the feet (transitional ones skipped unless in ``include``); None below S1."""
    names = vertebra_names(include=set(include) | {name})
    i = names.index(name)
    return names[i + 1] if i + 1 < len(names) else None


def sort_cranio_caudal(names: Iterable[str]) -> list[str]:
    """The vertebra names given, ordered from the head down (all must be in the table)."""
    return sorted(names, key=vertebra_order)


def vertebra_from_name(name: str) -> str | None:
    """The table name for ``"vertebrae_L3"``, ``"vertebra_l3"``, ``"L3"`` ...; None when it names no vertebra."""
    m = _NAME_PATTERN.match(name.strip())
    if m is None:
        return None
    candidate = f"{m.group(1).upper()}{int(m.group(2))}"
    return candidate if candidate in _BY_NAME else None


def label_order(name: str) -> int | None:
    """Cranio-caudal order (:func:`vertebra_order`) of a label name that names a vertebra (``vertebrae_L3``,
    ``vertebra_l3``, ``L3`` ...); None for any other name (``liver``, ``sacrum``)."""
    found = vertebra_from_name(name)
    return None if found is None else vertebra_order(found)


def totalseg_name(name: str) -> str:
    """TotalSegmentator class name of a vertebra: ``"L3"`` -> ``"vertebrae_L3"``."""
    return TOTALSEG_PREFIX + vertebra(name).name


def vertebra_from_verse(label: int) -> str | None:
    """Vertebra name of a VerSe label value (1 -> C1, 20 -> L1, 25 -> L6, 26 -> S1, 28 -> T13); None otherwise."""
    row = _BY_VERSE.get(int(label))
    return None if row is None else row.name


def verse_label(name: str) -> int | None:
    """VerSe label value of a vertebra name (``"L1"`` -> 20), None when VerSe has none."""
    return vertebra(name).verse_label
