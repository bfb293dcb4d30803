"""Example files (recap/data/examples.py): round trips and precise errors."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recap.data.examples import DataError, Example, example_from_row, read_examples, write_examples

UNICODE = "Ⓗⓔⓛⓛⓞ\u200b wörld — 你好 \u2028 next\x85 tab\t"
LATEX = r"What is $\frac{1}{2} + \sqrt{x}$? Use \boxed{}."


def _examples() -> list[Example]:
    return [
        Example(
            id="h1",
            kind="harmful",
            prompt=UNICODE,
            counter_reasoning="Sure, step one:\n  then…",
            counter_source="helpful-only",
            source="strongreject",
        ),
        Example(
            id="b1",
            kind="benign",
            prompt=[
                {"role": "system", "content": "Be nice."},
                {"role": "user", "content": "kill a python process " + UNICODE},
            ],
            counter_reasoning="This sounds dangerous.",
            prefill="This",
            prefill_words=1,
            prefill_source="conservative",
            seed=3,
        ),
        Example(id="t1", kind="task", prompt=LATEX, reference=r"\frac{1}{2}"),
        Example(id="t2", kind="task", prompt=[{"role": "user", "content": LATEX}], reference="0.5", seed=0),
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_round_trip(tmp_path, suffix):
    exs = _examples()
    path = write_examples(tmp_path / "sub" / f"data{suffix}", exs)
    assert path.exists() and path.suffix == suffix
    back = read_examples(path)
    assert back == exs
    assert back[0].prompt == UNICODE
    assert back[2].prompt == LATEX and back[2].reference == r"\frac{1}{2}"
    assert isinstance(back[1].prompt, list) and back[1].prompt[1]["content"].endswith(UNICODE)
    assert back[1].seed == 3 and back[3].seed == 0


def test_jsonl_keeps_unicode_raw(tmp_path):
    path = write_examples(tmp_path / "d.jsonl", _examples())
    raw = path.read_text(encoding="utf-8")
    assert "Ⓗⓔⓛⓛⓞ" in raw and "\\u24bd" not in raw
    assert len([line for line in raw.split("\n") if line]) == 4  # one row per line, nothing split


def test_messages_and_user_text():
    ex = Example(id="x", kind="benign", prompt="hello")
    assert ex.messages() == [{"role": "user", "content": "hello"}]
    ex = Example(
        id="x",
        kind="benign",
        prompt=[
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
        ],
    )
    assert ex.user_text() == "c"


def test_count_in_equals_count_out_with_blank_lines(tmp_path):
    rows = [{"id": f"e{i}", "kind": "benign", "prompt": f"prompt {i}"} for i in range(7)]
    path = tmp_path / "d.jsonl"
    path.write_text(
        "\n".join(json.dumps(r) + ("\n" if i % 2 else "") for i, r in enumerate(rows)) + "\n\n", encoding="utf-8"
    )
    back = read_examples(path)
    assert [e.id for e in back] == [r["id"] for r in rows]


def test_missing_id_is_derived_from_file_and_line(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"kind": "benign", "prompt": "a"}\n\n{"kind": "task", "prompt": "1+1", "reference": 2}\n')
    back = read_examples(path)
    assert [e.id for e in back] == ["mine-1", "mine-3"]
    assert back[1].reference == "2"


def _write_lines(tmp_path, lines) -> str:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


GOOD = json.dumps({"id": "ok", "kind": "benign", "prompt": "fine"})


@pytest.mark.parametrize(
    "bad_line, field",
    [
        ('{"id": "x", "kind": "benign", "prompt": "unterminated', None),
        (json.dumps({"id": "x", "kind": "benign"}), "prompt"),
        (json.dumps({"id": "x", "kind": "harmful", "prompt": None}), "prompt"),
        (json.dumps({"id": "x", "prompt": "p"}), "kind"),
        (json.dumps({"id": "x", "kind": "dangerous", "prompt": "p"}), "kind"),
        (json.dumps({"id": "x", "kind": "benign", "prompt": "   \n"}), "prompt"),
        (json.dumps({"id": "x", "kind": "benign", "prompt": []}), "prompt"),
        (json.dumps({"id": "x", "kind": "benign", "prompt": [{"role": "user"}]}), "prompt[0]"),
        (json.dumps({"id": "x", "kind": "benign", "prompt": [{"role": "assistant", "content": "hi"}]}), "prompt"),
        (json.dumps({"id": "x", "kind": "benign", "prompt": 42}), "prompt"),
        (json.dumps({"id": "x", "kind": "task", "prompt": "1+1"}), "reference"),
        (json.dumps({"id": "x", "kind": "task", "prompt": "1+1", "reference": ""}), "reference"),
        (json.dumps({"id": "x", "kind": "benign", "prompt": "p", "colour": "red"}), "colour"),
        ("[1, 2]", None),
    ],
)
def test_bad_row_names_file_line_and_field(tmp_path, bad_line, field):
    path = _write_lines(tmp_path, [GOOD, bad_line, GOOD.replace('"ok"', '"ok2"')])
    with pytest.raises(DataError) as info:
        read_examples(path)
    err = info.value
    assert err.path == path and err.line == 2 and err.field == field
    msg = str(err)
    assert msg.startswith(f"{path}:2:")
    if field is not None:
        assert f"field '{field}'" in msg


def test_bad_json_line_number_counts_blank_lines(tmp_path):
    path = _write_lines(tmp_path, ["", GOOD, "", "not json at all"])
    with pytest.raises(DataError, match=r"bad\.jsonl:4: not valid JSON") as info:
        read_examples(path)
    assert info.value.line == 4


def test_duplicate_id_and_empty_and_missing_file(tmp_path):
    path = _write_lines(tmp_path, [GOOD, GOOD])
    with pytest.raises(DataError, match="duplicate id 'ok'") as info:
        read_examples(path)
    assert info.value.field == "id"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no examples"):
        read_examples(empty)
    with pytest.raises(DataError, match="no such file") as info:
        read_examples(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in str(info.value)


def test_parquet_bad_row_names_file_row_and_field(tmp_path):
    path = tmp_path / "bad.parquet"
    rows = [
        {"id": "a", "kind": "task", "prompt": json.dumps("1+1"), "reference": "2"},
        {"id": "b", "kind": "task", "prompt": json.dumps("2+2"), "reference": None},
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DataError) as info:
        read_examples(path)
    assert (info.value.line, info.value.field) == (2, "reference")
    assert str(info.value).startswith(f"{path}:2:")


def test_parquet_plain_text_prompt_is_rejected_not_dropped(tmp_path):
    path = tmp_path / "foreign.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "a", "kind": "benign", "prompt": "plain text"}]), path)
    with pytest.raises(DataError) as info:
        read_examples(path)
    assert (info.value.line, info.value.field) == (1, "prompt")


def test_example_from_row_validates_in_memory():
    ex = example_from_row({"id": 7, "kind": "task", "prompt": "1+1", "reference": 2})
    assert ex.id == "7" and ex.reference == "2"
    with pytest.raises(DataError, match="<memory>: field 'kind'"):
        example_from_row({"prompt": "p", "kind": "other"})


def test_numeric_zero_reference_is_accepted(tmp_path):
    path = tmp_path / "zero.jsonl"
    path.write_text(json.dumps({"id": "z", "kind": "task", "prompt": "what is 3 minus 3 ?", "reference": 0}) + "\n")
    (ex,) = read_examples(path)
    assert ex.reference == "0"


def test_line_separator_inside_a_prompt_stays_in_the_row(tmp_path):
    from recap.data.examples import iter_jsonl

    path = tmp_path / "u.jsonl"
    path.write_text(
        json.dumps({"kind": "benign", "prompt": "a\u2028b\u0085c"}, ensure_ascii=False) + "\r\n", encoding="utf-8"
    )
    assert [n for n, _ in iter_jsonl(path)] == [1]
    assert read_examples(path)[0].prompt == "a\u2028b\u0085c"


@pytest.mark.parametrize("name", ["prompts.csv", "prompts.jsonl"])
def test_a_csv_table_given_as_examples_names_the_format_and_the_command_that_reads_it(tmp_path, name):
    path = tmp_path / name
    path.write_text("category,source,forbidden_prompt\ncrime,custom,how do i steal a car ?\n")
    with pytest.raises(DataError, match=rf"{name}:1: a CSV/TSV table, not a recap examples file.*recap data stats"):
        read_examples(path)
