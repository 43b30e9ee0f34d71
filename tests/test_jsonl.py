"""The append-only JSONL file the manifest and ``metadata.jsonl`` share (``_jsonl``): whole
lines read, a torn last line cut off, appends that start on a line of their own, the lock."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from dreambooth_async._jsonl import FileInUse, JsonlFile, scan
from dreambooth_async.cli import InputError, MetadataWriter


def _reader(into: list[tuple[int, bytes]]) -> Callable[[int, bytes], None]:
    return lambda number, raw: into.append((number, raw))


def test_scan_reads_whole_lines_and_stops_at_a_torn_one(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": 3')
    lines: list[tuple[int, bytes]] = []
    fragments: list[tuple[int, bytes]] = []
    assert scan(path, _reader(lines), torn=_reader(fragments)) == len(b'{"a": 1}\n{"b": 2}\n')
    assert lines == [(1, b'{"a": 1}\n'), (2, b'{"b": 2}\n')]
    assert fragments == [(3, b'{"c": 3')]


def test_opening_cuts_the_torn_line_and_appends_start_on_a_line_of_their_own(
    tmp_path: Path,
) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2')
    lines: list[tuple[int, bytes]] = []
    file = JsonlFile.open(path, _reader(lines), durable=False)
    try:
        assert file.size == len(b'{"a": 1}\n') and len(lines) == 1
        assert path.read_bytes() == b'{"a": 1}\n'
        file.append(b'{"c": 3}\n', sync=True)
    finally:
        file.close()
    assert file.closed
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"a": 1}, {"c": 3}]
    with pytest.raises(ValueError, match="closed"):
        file.append(b"{}\n", sync=False)


def test_a_reader_that_refuses_a_line_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    content = b'{"a": 1}\nnot json\n{"b": 2'
    path.write_bytes(content)

    def refuse(number: int, raw: bytes) -> None:
        json.loads(raw)

    with pytest.raises(ValueError):
        JsonlFile.open(path, refuse)
    assert path.read_bytes() == content  # nothing cut: the file may not be ours


def test_a_locked_file_is_refused_until_its_holder_closes_it(tmp_path: Path) -> None:
    pytest.importorskip("fcntl")
    path = tmp_path / "f.jsonl"
    holder = JsonlFile.open(path, _reader([]), lock=True, durable=False)
    try:
        with pytest.raises(FileInUse):
            JsonlFile.open(path, _reader([]), lock=True, durable=False)
        # Without asking for the lock, the file opens (metadata.jsonl relies on its folder's).
        JsonlFile.open(path, _reader([]), durable=False).close()
    finally:
        holder.close()
    JsonlFile.open(path, _reader([]), lock=True, durable=False).close()


def test_metadata_keeps_its_rows_and_cuts_a_row_torn_by_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "metadata.jsonl"
    rows = [{"file_name": "a.png", "prompt": "x"}, {"file_name": "b.png", "prompt": "y"}]
    whole = "".join(json.dumps(row) + "\n" for row in rows)
    path.write_text(whole + '{"file_name": "c.pn')
    writer = MetadataWriter(path)
    try:
        assert len(writer.known) == 2 and "a.png" in writer.known and "b.png" in writer.known
        assert path.read_text() == whole
    finally:
        writer.close()


def test_metadata_with_a_broken_row_in_the_middle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "metadata.jsonl"
    path.write_text('{"file_name": "a.png"}\nnot json\n{"file_name": "b.png"}\n')
    with pytest.raises(InputError, match=r"metadata\.jsonl:2: not a metadata row"):
        MetadataWriter(path)
