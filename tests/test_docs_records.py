"""Every results table in ``benchmarks/README.md`` and ``experiments/RESULTS.md`` says where its raw data
is: the first line after it starts with "Raw JSON:" (naming committed files, which must exist) or
"Raw data:" (what was not kept, and what was)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["benchmarks/README.md", "experiments/RESULTS.md"]


def tables(text: str) -> list[tuple[int, str, str]]:
    """(line number, header row, first non-blank line after the table) of every Markdown table."""
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        if re.match(r"^\s*\|\s*:?-{3,}", line) and i > 0:
            end = i
            while end + 1 < len(lines) and lines[end + 1].strip().startswith("|"):
                end += 1
            after = next((l.strip() for l in lines[end + 1:] if l.strip()), "")
            out.append((i, lines[i - 1].strip(), after))
    return out


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_table_says_where_its_raw_data_is(document):
    found = tables((ROOT / document).read_text(encoding="utf-8"))
    assert found, f"no tables found in {document}"
    missing = [f"line {i}: {header[:80]}" for i, header, after in found
               if not after.startswith(("Raw JSON:", "Raw data:"))]
    assert not missing, (f"{document}: tables without a 'Raw JSON: <committed file>' or 'Raw data: not kept (...)' "
                         f"line after them:\n" + "\n".join(missing))


@pytest.mark.parametrize("document", DOCUMENTS)
def test_the_raw_json_named_is_committed(document):
    named = {name for _, _, after in tables((ROOT / document).read_text(encoding="utf-8"))
             if after.startswith("Raw JSON:") for name in re.findall(r"benchmarks/[\w.-]+\.json", after)}
    assert all((ROOT / name).is_file() for name in named), sorted(n for n in named if not (ROOT / n).is_file())
