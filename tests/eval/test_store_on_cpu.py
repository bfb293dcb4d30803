"""The keyed, append-only results store (recap/eval/store.py)."""

import json

import pytest

from recap.eval.store import ResultStore, record_key
from recap.util.errors import DataError


def _rec(stage, example_id, sample=0, **kw):
    return {
        "key": record_key(stage, "judge", example_id, sample),
        "stage": stage,
        "example_id": example_id,
        "sample": sample,
        **kw,
    }


def test_records_persist_across_reopen_in_write_order(tmp_path):
    path = tmp_path / "deep" / "results.jsonl"
    store = ResultStore(path)
    a, b, c = _rec("m:clean", "a", label="refusal"), _rec("m:clean", "b", label="Ⓗ"), _rec("m:prefill", "a")
    store.add([a, b])
    store.add([c])
    store.add([])
    again = ResultStore(path)
    assert again.records() == [a, b, c] == store.records()
    assert again.records(stage="m:clean") == [a, b]
    assert again.records(example_id="a") == [a, c]
    assert again.has(a["key"]) and not again.has(record_key("m:clean", "judge", "a", 1))
    assert again.warnings == []


def test_keys_separate_judges_samples_and_stages():
    keys = {record_key(s, j, "x", n) for s in ("m:clean", "m:prefill") for j in ("rules", "guard") for n in (0, 1)}
    assert len(keys) == 8


def test_a_redone_key_keeps_its_latest_record_once(tmp_path):
    path = tmp_path / "r.jsonl"
    ResultStore(path).add([_rec("s", "a", label="old"), _rec("s", "b")])
    ResultStore(path).add([_rec("s", "a", label="new")])
    records = ResultStore(path).records()
    assert [(r["example_id"], r.get("label")) for r in records] == [("a", "new"), ("b", None)]


def test_truncated_last_line_is_reported_dropped_and_cut_before_the_next_append(tmp_path):
    path = tmp_path / "r.jsonl"
    ResultStore(path).add([_rec("s", "a"), _rec("s", "b")])
    whole = path.read_bytes()
    path.write_bytes(whole + json.dumps(_rec("s", "c")).encode()[:25])  # the write in flight at a kill
    store = ResultStore(path)
    assert [r["example_id"] for r in store.records()] == ["a", "b"]
    assert len(store.warnings) == 1 and f"{path}:3: truncated last line" in store.warnings[0]
    store.add([_rec("s", "c")])
    assert path.read_bytes() == whole + (json.dumps(_rec("s", "c")) + "\n").encode()
    assert ResultStore(path).warnings == []


def test_broken_line_in_the_middle_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    ResultStore(path).add([_rec("s", "a")])
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"key": "x", "stage"\n' + json.dumps(_rec("s", "b")) + "\n")
    with pytest.raises(DataError) as info:
        ResultStore(path)
    assert str(info.value).startswith(f"{path}:2:") and "not valid JSON" in str(info.value)


def test_record_without_key_is_refused(tmp_path):
    with pytest.raises(ValueError, match="needs its 'key'"):
        ResultStore(tmp_path / "r.jsonl").add([{"stage": "s"}])
    assert not (tmp_path / "r.jsonl").exists()


def test_compact_keeps_the_latest_record_per_key_in_order_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "r.jsonl"
    ResultStore(path).add([_rec("s", "a", label="old"), _rec("s", "b"), _rec("s", "c", label="old")])
    ResultStore(path).add([_rec("s", "c", label="new"), _rec("s", "a", label="new"), _rec("s", "d")])
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(_rec("s", "e"))[:30])  # a torn last line
    store = ResultStore(path)
    before = store.records()
    assert store.compact() == 3  # two superseded records and the torn line
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(x) for x in lines] == before == store.records()
    assert [(r["example_id"], r.get("label")) for r in before] == [("a", "new"), ("b", None), ("c", "new"), ("d", None)]
    assert ResultStore(path).records() == before and ResultStore(path).warnings == []
    # written through a temporary file, renamed (beside the lock file every writer leaves)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".r.jsonl.lock", "r.jsonl"]
    store.add([_rec("s", "e")])  # the store stays usable after compaction
    assert [r["example_id"] for r in ResultStore(path).records()] == ["a", "b", "c", "d", "e"]


def test_compact_leaves_a_store_without_duplicates_untouched(tmp_path):
    path = tmp_path / "r.jsonl"
    ResultStore(path).add([_rec("s", "a"), _rec("s", "b")])
    inode = path.stat().st_ino
    assert ResultStore(path).compact() == 0 and path.stat().st_ino == inode


def test_a_failed_append_names_the_store_and_leaves_no_half_line(tmp_path, monkeypatch):
    import errno
    import os

    path = tmp_path / "r.jsonl"
    store = ResultStore(path)
    store.add([_rec("s", "a")])
    whole = path.read_bytes()

    def full(fd):  # the disk fills while the chunk is appended: part of it reached the file
        os.write(fd, b'{"key": "half a li')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as info:
        store.add([_rec("s", "b")])
    assert str(info.value) == f"cannot append to {path}: No space left on device"
    monkeypatch.undo()
    assert path.read_bytes() == whole and not store.has(_rec("s", "b")["key"])
    store.add([_rec("s", "b")])  # room again: the chunk is written whole
    assert [r["example_id"] for r in ResultStore(path).records()] == ["a", "b"]


def test_a_last_line_torn_inside_a_multibyte_character_is_repaired_like_any_torn_line(tmp_path):
    """A kill in the middle of "é" leaves a byte that is not UTF-8 at the end: before, reading the store failed
    with `'utf-8' codec can't decode byte 0xc3` (no file named) and the torn-line repair never ran."""
    path = tmp_path / "r.jsonl"
    ResultStore(path).add([_rec("s", "a", answer="café")])
    whole = path.read_bytes()
    torn = (json.dumps(_rec("s", "b", answer="café"), ensure_ascii=False)).encode()
    path.write_bytes(whole + torn[: torn.index("é".encode()) + 1])  # cut after the first byte of "é"
    store = ResultStore(path)
    assert [r["example_id"] for r in store.records()] == ["a"]
    assert len(store.warnings) == 1 and f"{path}:2: truncated last line" in store.warnings[0]
    store.add([_rec("s", "b", answer="café")])
    assert [r["answer"] for r in ResultStore(path).records()] == ["café", "café"]
    assert ResultStore(path).warnings == []


def test_a_byte_that_is_not_utf8_in_the_middle_names_the_file_line_and_byte(tmp_path):
    path = tmp_path / "r.jsonl"
    ResultStore(path).add([_rec("s", "a")])
    with open(path, "ab") as fh:
        fh.write(b'{"key": "k", "answer": "caf\xe9"}\n' + json.dumps(_rec("s", "b")).encode() + b"\n")
    with pytest.raises(DataError) as info:
        ResultStore(path)
    assert str(info.value).startswith(f"{path}:2:") and "not UTF-8 text (byte 0xe9" in str(info.value)


def test_compacting_a_symlinked_store_rewrites_its_target_and_keeps_the_link(tmp_path):
    target = tmp_path / "shared" / "r.jsonl"
    target.parent.mkdir()
    ResultStore(target).add([_rec("s", "a", v=1), _rec("s", "a", v=2)])  # a superseded line to compact away
    link = tmp_path / "r.jsonl"
    link.symlink_to(target)
    assert ResultStore(link).compact() == 1
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert [r["v"] for r in ResultStore(target).records()] == [2] and len(target.read_text().splitlines()) == 1


def test_a_store_written_by_another_process_since_it_was_read_is_read_again_before_writing(tmp_path):
    """A store object opened before another writer appended must not compact from its stale copy."""
    path = tmp_path / "r.jsonl"
    ResultStore(path).add([_rec("s", "a"), _rec("s", "a")])
    stale = ResultStore(path)
    ResultStore(path).add([_rec("s", "b")])  # another writer, after `stale` was read
    assert stale.compact() == 1
    assert [r["example_id"] for r in ResultStore(path).records()] == ["a", "b"]
