"""Checks pandas does not make on a CSV file: the header line as written, before pandas
renames a repeated column ("dog", "dog" -> "dog", "dog.1"), so a repeated class column can
be reported; and data rows with more fields than the header (unquoted multi-labels:
`a.wav,Bark,Meow`), which pandas would read by taking the first column as the index.
A file whose every row holds one field more, first a distinct whole number, is the
row-name layout R's write.table writes; pandas reads it right (the row names as its
index), so it is passed on whole."""
from __future__ import annotations

import csv
import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

log = logging.getLogger("raytag.data")


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
    every_row: bool = False  # every data row of the file is one field longer: row names, perhaps

    @property
    def problem(self) -> str:
        counts = f"{len(self.fields)} fields but the header has {len(self.header)}"
        if not any(f.strip() for f in self.fields[len(self.header):]):
            return f"{counts} (a trailing comma?); remove the empty field"
        if self.every_row:
            return (f"{counts}, like every row of the file: a row-name column? Write it without row names "
                    f"(R: write.csv(df, row.names = FALSE)); else {self._how_to_write()}")
        return f"{counts}; {self._how_to_write()}"

    def _how_to_write(self) -> str:
        """How a row of this file holds what its extra fields held, by the file's form."""
        if "labels" in self.header:  # 2019: labels separated by commas, so quoted
            return 'quote a field that holds several labels: a.wav,"Bark,Meow"'
        if "label" in self.header:  # 2018: a submission's top 3 separated by spaces
            return ("a 2018 file separates labels with spaces, not commas (a submission lists up to 3: "
                    "a.wav,Bark Meow Rain; a truth or train.csv row holds one label)")
        return "check the row for a stray comma: one value for each column of the header"

    def value(self, column: str) -> str:
        """The row's field under `column` as written (the first field without that column)."""
        return self.fields[self.header.index(column) if column in self.header else 0].strip()


@dataclass
class CsvRows:
    """A CSV file's text split into what pandas may read and the rows it must not."""

    text: str  # the file without its over-long rows
    lines: Optional[list[int]]  # the line each data row of `text` starts on; None: not known
    overlong: list[OverlongRow] = field(default_factory=list)
    # every row starts with a row name the header has no field for (R's write.table): pandas
    # reads them as its index, which the reader drops
    row_names: bool = False


@dataclass
class _Record:
    start: int  # the lines the record spans, as csv.reader counts them
    end: int
    fields: list[str]


def split_overlong_rows(text: str) -> CsvRows:
    """Take the rows with more fields than the header out of a CSV file's text, unless
    every row has a row name (`has_row_names`): the text is then kept whole.

    Lines are counted as csv.reader counts them (a quoted field may span lines), and a
    blank line is skipped as pandas skips it. When csv cannot read the text, it is returned
    whole (lines None), for pandas to report."""
    lines = io.StringIO(text, newline="").readlines()  # the lines csv.reader is fed
    try:
        records = _records(lines)
    except csv.Error:
        return CsvRows(text, None)
    if not records:
        return CsvRows(text, [])
    header, rows = [name.strip() for name in records[0].fields], records[1:]
    if has_row_names(header, [row.fields for row in rows]):
        return CsvRows(text, [row.start for row in rows], row_names=True)
    every_row = len(rows) > 1 and all(len(row.fields) == len(header) + 1 for row in rows)
    overlong, kept_starts, drop = [], [], set()
    for row in rows:
        if len(row.fields) > len(header):
            overlong.append(OverlongRow(row.start, row.fields, header, every_row))
            drop.update(range(row.start, row.end + 1))
        else:
            kept_starts.append(row.start)
    kept = "".join(line for n, line in enumerate(lines, start=1) if n not in drop) if drop else text
    return CsvRows(kept, kept_starts, overlong)


def read_rows(text: str, path) -> CsvRows:
    """`split_overlong_rows`, warning that the row names of file `path` are left out when it
    has them: pandas reads them as its index, which every reader drops."""
    rows = split_overlong_rows(text)
    if rows.row_names:
        log.warning("%s: every row has one field more than the header, first a row number (R's write.table "
                    "row names): read without it; R: write.csv(df, row.names = FALSE) leaves it out", path)
    return rows


def _records(lines: list[str]) -> list[_Record]:
    """The file's records that are not blank (pandas skips blank lines), header first."""
    reader = csv.reader(lines)
    records, start = [], 1
    for fields in reader:
        end = reader.line_num
        if len(fields) > 1 or "".join(fields).strip():
            records.append(_Record(start, end, fields))
        start = end + 1
    return records


def has_row_names(header: list[str], rows: list[list[str]]) -> bool:
    """Whether every data row holds one field more than the header, first a distinct whole
    number: R's write.table(df, sep = ",") with its default row names ("1","a.wav","Bark").
    A file of unquoted labels (a.wav,Bark,Meow) starts its rows with file names instead."""
    if not rows or any(len(row) != len(header) + 1 for row in rows):
        return False
    names = [row[0].strip() for row in rows]
    return all(re.fullmatch(r"\d+", name) for name in names) and len(set(names)) == len(names)


def describe_overlong(rows: list[OverlongRow]) -> str:
    """One message for the over-long rows of a file: the first, then where the others are."""
    first = f"line {rows[0].line}: {rows[0].problem}"
    if len(rows) == 1:
        return first
    more = ", ".join(str(r.line) for r in rows[1:6]) + (" ..." if len(rows) > 6 else "")
    return f"{first} (and {len(rows) - 1} more such rows, on lines {more})"
