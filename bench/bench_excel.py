"""Excel read and write speed against pandas, and the reader's memory at two sizes.

Run: .venv/bin/python bench/bench_excel.py [--rows 100000] [--big 200000] [--small 20000]

1. Write: the same ROWS-row table (7 columns: a text key, text, an int, a float, a bool, an
   ISO date and a longer text) with rowpilot's Excel writer (``write_workbook``, as
   ``-o out.xlsx`` writes) and with ``DataFrame.to_excel`` (pandas' default engine): seconds
   and rows/s, and the ratio.
2. Read: that file with rowpilot's Excel source (every row as ``chunks()`` gives it) and
   with ``pandas.read_excel`` (its default engine, openpyxl, and calamine), and, for the
   reader choice, openpyxl read-only and python-calamine bare.
3. Memory: the peak RSS of a fresh process reading a BIG-row and a SMALL-row workbook
   through rowpilot's source and through python-calamine bare; "flat" is a ratio near 1.

Each figure is one run on a shared machine: noisy; compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _common import machine

from rowpilot.sinks.excel import write_workbook
from rowpilot.sources import open_source

COLUMNS = ["id", "name", "count", "score", "flag", "day", "text"]


def rows(count: int) -> Iterator[list[Any]]:
    for i in range(count):
        day = f"20{20 + i % 8}-{1 + i % 12:02d}-{1 + i % 28:02d}"
        text = f"some longer text for row {i} with words"
        yield [f"{i:07d}", f"name {i % 997}", i * 7, i / 3, i % 2 == 0, day, text]


def timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def write_ours(path: Path, count: int) -> None:
    write_workbook(path, COLUMNS, ((row[0], row) for row in rows(count)))


def read_ours(path: Path) -> int:
    return sum(len(chunk) for chunk in open_source(path).chunks())


def read_openpyxl(path: Path) -> int:
    import openpyxl

    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    count = sum(1 for _ in book.worksheets[0].iter_rows(values_only=True))
    book.close()
    return count - 1


def read_calamine(path: Path) -> int:
    import python_calamine

    book = python_calamine.CalamineWorkbook.from_path(str(path))
    return sum(1 for _ in book.get_sheet_by_index(0).iter_rows()) - 1


def pandas_read(engine: str) -> Callable[[Path], int]:
    def read(path: Path) -> int:
        import pandas as pd

        return len(pd.read_excel(path, engine=engine))  # type: ignore[call-overload]

    return read


def section_speed(folder: Path, count: int) -> None:
    import pandas as pd

    ours_path, pandas_path = folder / "ours.xlsx", folder / "pandas.xlsx"
    ours = timed(lambda: write_ours(ours_path, count))
    frame = pd.DataFrame(list(rows(count)), columns=COLUMNS)
    theirs = timed(lambda: frame.to_excel(pandas_path, index=False))
    print(f"write {count:,} rows x {len(COLUMNS)} columns")
    print(f"  rowpilot (xlsxwriter)   {ours:6.2f} s  {count / ours:9,.0f} rows/s")
    print(f"  DataFrame.to_excel      {theirs:6.2f} s  {count / theirs:9,.0f} rows/s")
    print(f"  ratio rowpilot/pandas   {theirs / ours:6.2f}x faster")
    readers: list[tuple[str, Callable[[Path], int]]] = [
        ("rowpilot source", read_ours),
        ("pandas (openpyxl)", pandas_read("openpyxl")),
        ("pandas (calamine)", pandas_read("calamine")),
        ("openpyxl read-only", read_openpyxl),
        ("python-calamine", read_calamine),
    ]
    print(f"read {count:,} rows (the file rowpilot wrote)")
    seconds: dict[str, float] = {}
    for name, read in readers:
        start = time.perf_counter()
        got = read(ours_path)
        seconds[name] = time.perf_counter() - start
        assert got == count, (name, got)
        print(f"  {name:22} {seconds[name]:6.2f} s  {count / seconds[name]:9,.0f} rows/s")
    base = seconds["pandas (openpyxl)"]
    print(f"  ratio rowpilot/pandas(openpyxl) {base / seconds['rowpilot source']:.2f}x faster")


READS = {
    # Each imports only what it reads with, so the baseline is the reader's own.
    "rowpilot source": "from rowpilot.sources import open_source\n"
    "for chunk in open_source(PATH).chunks(): pass\n",
    "python-calamine": "import python_calamine\n"
    "book = python_calamine.CalamineWorkbook.from_path(PATH)\n"
    "for row in book.get_sheet_by_index(0).iter_rows(): pass\n",
}


def peak_rss_mb(reader: str, path: Path) -> float:
    """The peak resident size (MB) of a fresh process that reads ``path`` with ``reader``."""
    # VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's size at the fork.
    code = (
        f"PATH = {str(path)!r}\n{READS[reader]}"
        "hwm = [line for line in open('/proc/self/status') if line.startswith('VmHWM')]\n"
        "print(hwm[0].split()[1])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1]) / 1024


def section_memory(folder: Path, big: int, small: int) -> None:
    paths = {}
    for count in (small, big):
        paths[count] = folder / f"rows-{count}.xlsx"
        write_ours(paths[count], count)
    print(f"peak RSS of a process reading {small:,} and {big:,} rows")
    for reader in READS:
        low, high = (peak_rss_mb(reader, paths[count]) for count in (small, big))
        print(f"  {reader:22} {low:6.0f} MB -> {high:6.0f} MB  ratio {high / low:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--big", type=int, default=200_000)
    parser.add_argument("--small", type=int, default=20_000)
    args = parser.parse_args()
    print(machine())
    print(f"max RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB")
    with tempfile.TemporaryDirectory() as folder:
        section_speed(Path(folder), args.rows)
        section_memory(Path(folder), args.big, args.small)


if __name__ == "__main__":
    main()
