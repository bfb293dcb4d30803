"""Atomic writes (recap/files.py): a write that fails half-way leaves the previous file (or none), never
half a file, and no temporary file behind; the library's writers go through it."""

import json

import pytest

from recap.data.examples import Example, read_examples, write_examples
from recap.files import atomic_dir, atomic_write, write_text


def test_a_failed_write_keeps_the_previous_file_whole(tmp_path):
    path = write_text(tmp_path / "out.json", '{"ok": 1}')
    with pytest.raises(RuntimeError):
        with atomic_write(path) as fh:
            fh.write('{"ok": ')
            raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_failed_first_write_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "deep" / "new.jsonl") as fh:
            fh.write("half")
            raise RuntimeError
    assert list((tmp_path / "deep").iterdir()) == []


def test_a_failed_folder_write_keeps_the_previous_folder(tmp_path):
    with atomic_dir(tmp_path / "final") as tmp:
        (tmp / "config.json").write_text("{}")
        (tmp / "model.safetensors").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "final") as tmp:
            (tmp / "config.json").write_text("{}")  # the marker a reader checks first, weights not yet
            raise RuntimeError("killed while saving")
    assert (tmp_path / "final" / "model.safetensors").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    with atomic_dir(tmp_path / "final") as tmp:
        (tmp / "model.safetensors").write_text("v2")
    assert sorted(p.name for p in (tmp_path / "final").iterdir()) == ["model.safetensors"]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_datasets_are_written_atomically(tmp_path, suffix, monkeypatch):
    path = tmp_path / f"mix{suffix}"
    write_examples(path, [Example(id="a", kind="harmful", prompt="p")])
    before = path.read_bytes()
    if suffix == ".jsonl":
        real = json.dumps

        def dumps(obj, **kw):  # the second row's write is cut off by the "kill"
            if isinstance(obj, dict) and obj.get("id") == "b":
                raise RuntimeError("killed mid-write")
            return real(obj, **kw)

        monkeypatch.setattr(json, "dumps", dumps)
    else:
        import pyarrow.parquet as pq

        def write_table(table, where, **kw):
            where.write(b"PAR1 half a file")
            raise RuntimeError("killed mid-write")

        monkeypatch.setattr(pq, "write_table", write_table)
    with pytest.raises(RuntimeError):
        write_examples(path, [Example(id="a", kind="harmful", prompt="p"), Example(id="b", kind="benign", prompt="q")])
    assert path.read_bytes() == before and [e.id for e in read_examples(path)] == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
