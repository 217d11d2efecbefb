"""The split a job asks for when it opens a store, instead of the default the store was prepared with.

A store (format 2) records a default split (date ranges or fractions) and computes its splits as views when it is
opened (:mod:`ds_kronos.data.store.view`), so a job may choose another one without preparing again: all three
fractions, or date ranges for any of train/val/test (the others keep the store's default ranges). A format-1
folder holds its splits as files: asking it for another split is refused with one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from ds_kronos.data.manifest import SPLITS
from ds_kronos.data.splits import parse_range
from ds_kronos.errors import ConfigError

Range = str | Sequence[str]


@dataclass(frozen=True)
class SplitChoice:
    """``ranges``: split -> 'START,END' (any of train/val/test), or ``fractions``: TRAIN,VAL,TEST."""

    ranges: Mapping[str, str] | None = None
    fractions: tuple[float, float, float] | None = None

    @classmethod
    def from_options(cls, *, train_range: Range | None = None, val_range: Range | None = None,
                     test_range: Range | None = None, split: str | Sequence[float] | None = None
                     ) -> "SplitChoice | None":
        """From job options shaped as ``launch/prepare_data.py``'s (a range 'START,END' or [START, END]; ``split``
        '0.8,0.1,0.1' or three numbers); None when none is given. ConfigError (one line) for a bad one."""
        given = {name: value for name, value in zip(SPLITS, (train_range, val_range, test_range)) if value is not None}
        if split is not None and given:
            raise ConfigError(f"--split and --{'/--'.join(f'{n}_range' for n in given)} are mutually exclusive")
        if split is not None:
            try:
                fractions = [float(x) for x in (split.split(",") if isinstance(split, str) else split)]
            except ValueError:
                raise ConfigError(f"--split {split!r}: expected three fractions such as 0.8,0.1,0.1") from None
            if len(fractions) != 3 or min(fractions) <= 0 or sum(fractions) > 1.0 + 1e-9:
                raise ConfigError(f"--split needs three positive fractions summing to at most 1, got {split!r}")
            return cls(fractions=(fractions[0], fractions[1], fractions[2]))
        if not given:
            return None
        ranges = {}
        for name, value in given.items():
            text = value if isinstance(value, str) else ",".join(map(str, value))
            try:
                parse_range(text)
            except ValueError as exc:
                raise ConfigError(f"--{name}_range: {exc}") from None
            ranges[name] = text
        return cls(ranges=ranges)

    def settings(self, defaults: dict, where: str) -> dict:
        """The split settings in force over the store's ``defaults`` (its index's ``splits``)."""
        if self.fractions is not None:
            return {"fractions": list(self.fractions), "ranges": None}
        ranges = dict(self.ranges or {})
        if set(ranges) != set(SPLITS):
            if not defaults.get("ranges"):
                missing = ", ".join(f"--{n}_range" for n in SPLITS if n not in ranges)
                raise ConfigError(f"{where}: its default split is by fractions, so a split by dates needs all three "
                                  f"ranges ({missing} missing)")
            ranges = {**defaults["ranges"], **ranges}
        return {"fractions": None, "ranges": ranges}
