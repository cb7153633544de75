"""The header line of a CSV file as written, before pandas renames a repeated column
("dog", "dog" -> "dog", "dog.1"), so a repeated class column can be reported."""
from __future__ import annotations

import csv
from pathlib import Path


def header_fields(path: str | Path) -> list[str]:
    """The names on the first line of a CSV file, stripped; [] for an empty file."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        row = next(csv.reader(fh), [])
    return [name.strip() for name in row]


def unnamed_fields(path: str | Path) -> list[int]:
    """1-based positions of header fields with no name (a trailing comma from a spreadsheet:
    pandas would name that column "Unnamed: N")."""
    return [i + 1 for i, name in enumerate(header_fields(path)) if not name]


def repeated_fields(path: str | Path) -> list[str]:
    """Names that appear more than once on the header line, in first-seen order."""
    return repeated_names(header_fields(path))


def repeated_names(names) -> list[str]:
    """Names that appear more than once in `names`, in first-seen order."""
    seen, repeated = set(), []
    for name in names:
        if name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    return repeated
