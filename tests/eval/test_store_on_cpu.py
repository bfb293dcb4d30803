"""The resumable JSONL results store (recap/eval/store.py)."""

import json

import pytest

from recap.eval.store import ResultStore


def test_records_persist_across_reopen(tmp_path):
    path = tmp_path / "deep" / "results.jsonl"
    store = ResultStore(path)
    assert not store.done("m:clean") and store.records() == []
    store.add_stage("m:clean", [{"example_id": "a", "label": "refusal"}, {"example_id": "b", "label": "Ⓗ"}])
    store.add_stage("m:prefill", [{"example_id": "a", "label": "compliance"}])
    store.add_stage("m:empty", [])
    assert store.done("m:clean") and store.done("m:empty")
    again = ResultStore(path)
    assert again.done("m:clean") and again.done("m:prefill") and again.done("m:empty")
    assert not again.done("m:hijack")
    assert again.records() == store.records()
    assert again.records(stage="m:clean") == [{"example_id": "a", "label": "refusal", "stage": "m:clean"},
                                              {"example_id": "b", "label": "Ⓗ", "stage": "m:clean"}]
    assert again.records(example_id="a") == [{"example_id": "a", "label": "refusal", "stage": "m:clean"},
                                             {"example_id": "a", "label": "compliance", "stage": "m:prefill"}]
    assert again.records(stage="m:empty") == []
    assert again.records(example_id="a", label="compliance") == [
        {"example_id": "a", "label": "compliance", "stage": "m:prefill"}]


def _append(path, rows):
    with open(path, "a", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")


def test_stage_without_marker_is_not_done_and_partial_records_hidden(tmp_path):
    path = tmp_path / "r.jsonl"
    ResultStore(path).add_stage("s1", [{"x": 1}])
    _append(path, [{"x": 2, "stage": "s2"}, {"x": 3, "stage": "s2"}])  # interrupted mid-stage
    store = ResultStore(path)
    assert store.done("s1") and not store.done("s2")
    assert store.records(stage="s2") == []
    assert store.records() == [{"x": 1, "stage": "s1"}]
    # nothing written is deleted: start marker, record, done marker, two partial records
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert [r.get("x") for r in lines if "x" in r] == [1, 2, 3]


def test_redoing_an_interrupted_stage_in_the_same_session(tmp_path):
    path = tmp_path / "r.jsonl"
    _append(path, [{"x": 1, "stage": "s"}])
    store = ResultStore(path)
    store.add_stage("s", [{"x": 1}, {"x": 2}])
    assert store.records(stage="s") == [{"x": 1, "stage": "s"}, {"x": 2, "stage": "s"}]


def test_redone_stage_is_not_duplicated_after_reopen(tmp_path):
    path = tmp_path / "r.jsonl"
    _append(path, [{"x": 1, "stage": "s"}])  # interrupted run: one record, no marker
    ResultStore(path).add_stage("s", [{"x": 1}, {"x": 2}])  # the resumed run redoes the stage
    assert ResultStore(path).records(stage="s") == [{"x": 1, "stage": "s"}, {"x": 2, "stage": "s"}]


def test_corrupt_line_names_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    ResultStore(path).add_stage("s1", [{"x": 1}, {"x": 2}])
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('\n{"x": 3, "stage": "s2"\n')
    with pytest.raises(ValueError) as info:
        ResultStore(path)
    assert str(info.value).startswith(f"{path}:6:")  # start marker, 2 records, done marker, blank line
    assert "corrupt" in str(info.value)
