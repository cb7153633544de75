"""Checks pandas does not make on a CSV file: the header line as written, before pandas
renames a repeated column ("dog", "dog" -> "dog", "dog.1"), so a repeated class column can
be reported; and data rows with more fields than the header (unquoted multi-labels:
`a.wav,Bark,Meow`), which pandas would read by taking the first column as the index."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


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


@dataclass
class OverlongRow:
    """A data row with more fields than the header. pandas would read a file that has one
    (as its first row) with the first column as the index, every row shifted a column left."""

    line: int  # where the row starts in the file
    fields: list[str]
    header: list[str]  # stripped

    @property
    def problem(self) -> str:
        counts = f"{len(self.fields)} fields but the header has {len(self.header)}"
        if not any(f.strip() for f in self.fields[len(self.header):]):
            return f"{counts} (a trailing comma?); remove the empty field"
        return f'{counts}; quote a field that holds several labels: a.wav,"Bark,Meow"'

    def value(self, column: str) -> str:
        """The row's field under `column` as written (the first field without that column)."""
        return self.fields[self.header.index(column) if column in self.header else 0].strip()


@dataclass
class CsvRows:
    """A CSV file's text split into what pandas may read and the rows it must not."""

    text: str  # the file without its over-long rows
    lines: Optional[list[int]]  # the line each data row of `text` starts on; None: not known
    overlong: list[OverlongRow] = field(default_factory=list)


def split_overlong_rows(text: str) -> CsvRows:
    """Take the rows with more fields than the header out of a CSV file's text.

    Lines are counted as csv.reader counts them (a quoted field may span lines), and a
    blank line is skipped as pandas skips it. When csv cannot read the text, it is returned
    whole (lines None), for pandas to report."""
    lines = io.StringIO(text, newline="").readlines()  # the lines csv.reader is fed
    reader = csv.reader(lines)
    header, starts, overlong, drop = None, [], [], set()
    start = 1
    try:
        for record in reader:
            end = reader.line_num
            if len(record) > 1 or "".join(record).strip():  # pandas skips blank lines
                if header is None:
                    header = [name.strip() for name in record]
                elif len(record) > len(header):
                    overlong.append(OverlongRow(start, record, header))
                    drop.update(range(start, end + 1))
                else:
                    starts.append(start)
            start = end + 1
    except csv.Error:
        return CsvRows(text, None)
    kept = "".join(line for n, line in enumerate(lines, start=1) if n not in drop) if drop else text
    return CsvRows(kept, starts, overlong)


def describe_overlong(rows: list[OverlongRow]) -> str:
    """One message for the over-long rows of a file: the first, then where the others are."""
    first = f"line {rows[0].line}: {rows[0].problem}"
    if len(rows) == 1:
        return first
    more = ", ".join(str(r.line) for r in rows[1:6]) + (" ..." if len(rows) > 6 else "")
    return f"{first} (and {len(rows) - 1} more such rows, on lines {more})"
