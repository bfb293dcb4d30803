"""Row readers (recap/data/readers.py): every row with the line it starts on, from JSONL, CSV/TSV, Parquet
and (stubbed) hub datasets; errors name the file and the line."""

import sys
import types

import pytest

from recap.data.readers import (
    file_rows,
    first_jsonl_row,
    hub_rows,
    jsonl_rows,
    looks_like_hub_id,
    parquet_rows,
    table_header,
    table_rows,
)
from recap.util.errors import DataError


def test_jsonl_rows_number_physical_lines_and_skip_a_bom_and_blank_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n{"a": "x\xe2\x80\xa8y"}\n')  # U+2028 inside a value splits nothing
    assert list(jsonl_rows(path)) == [(1, {"a": 1}), (3, {"a": "x\u2028y"})]
    assert first_jsonl_row(path) == (1, {"a": 1})


@pytest.mark.parametrize(
    "data, match",
    [
        (b'{"a": 1}\n{"a": \n', r"bad\.jsonl:2: not valid JSON"),
        (b'{"a": 1}\n[1, 2]\n', r"bad\.jsonl:2: expected a JSON object, got list"),
        (b'{"a": 1}\n{"a": "\xff"}\n', r"bad\.jsonl:2: not UTF-8"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, data, match):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(data)
    with pytest.raises(DataError, match=match):
        list(jsonl_rows(path))


def test_csv_rows_start_on_the_line_of_their_record(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('\ufeffid,prompt\n1,"two\nlines"\n2,three\n', encoding="utf-8")
    assert table_header(path, ",") == ["id", "prompt"]
    assert list(table_rows(path, ",")) == [
        (2, {"id": "1", "prompt": "two\nlines"}),
        (4, {"id": "2", "prompt": "three"}),
    ]


def test_csv_short_and_long_rows_are_errors_naming_the_line_and_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,prompt\n1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"t\.csv:2: field 'prompt': row has 1 values but the header has 2"):
        list(table_rows(path, ","))
    path.write_text("id,prompt\n1,a,b\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"t\.csv:2: row has 3 values but the header has 2"):
        list(table_rows(path, ","))


def test_check_columns_sees_the_header_and_its_line_before_any_row(tmp_path):
    seen = []
    path = tmp_path / "t.tsv"
    path.write_text("\nid\tprompt\n1\ta\n", encoding="utf-8")
    assert list(file_rows(path, lambda cols, line: seen.append((cols, line)))) == [(3, {"id": "1", "prompt": "a"})]
    assert seen == [(["id", "prompt"], 2)]


def test_parquet_rows_are_numbered_from_one(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "a"}, {"prompt": "b"}]), path)
    seen = []
    assert list(parquet_rows(path, lambda cols, line: seen.append((cols, line)))) == [
        (1, {"prompt": "a"}),
        (2, {"prompt": "b"}),
    ]
    assert seen == [(["prompt"], None)]


def test_file_rows_reads_an_unknown_suffix_as_the_fallback(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("prompt\nhello\n", encoding="utf-8")
    assert list(file_rows(path, fallback="csv")) == [(2, {"prompt": "hello"})]
    with pytest.raises(DataError, match=r"t\.txt:1: not valid JSON"):
        list(file_rows(path))


@pytest.mark.parametrize(
    "s, hub", [("owner/name", True), ("walledai/HarmBench", True), ("data/x.csv", False), ("./a/b", False)]
)
def test_looks_like_hub_id(s, hub):
    assert looks_like_hub_id(s) is hub


def test_hub_rows_pick_the_test_split_and_number_rows(monkeypatch):
    calls = []

    def load_dataset(hub_id, *args, split=None):
        calls.append((hub_id, args, split))
        return {"train": [{"q": "t"}], "test": [{"q": "a"}, {"q": "b"}]}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    rows, cols = hub_rows("owner/name", None, "main")
    assert list(rows) == [(1, {"q": "a"}), (2, {"q": "b"})] and cols == ["q"]
    assert calls == [("owner/name", ("main",), None)]
