"""ponder.records: resumable JSONL files (torn tails cut, foreign files left alone)."""

import json

import pytest

from ponder.records import append_line, open_append, read_jsonl, repair_tail


def test_append_then_read_round_trips(tmp_path):
    path = tmp_path / "sub" / "out.jsonl"
    with open_append(path) as f:
        append_line(f, {"id": 1, "text": "a\nb"})
        append_line(f, {"id": 2})
    assert read_jsonl(path) == [{"id": 1, "text": "a\nb"}, {"id": 2}]


def test_torn_tail_is_cut_and_appending_continues(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": 1}\n{"id": 2, "te')
    with open_append(path) as f:
        append_line(f, {"id": 3})
    assert read_jsonl(path) == [{"id": 1}, {"id": 3}]


def test_whole_last_object_without_newline_is_kept(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": 1}\n{"id": 2}')
    repair_tail(path)
    assert path.read_text() == '{"id": 1}\n{"id": 2}\n'


@pytest.mark.parametrize("text", ["hello world\nsecond line", "[1, 2]\n{\"id\": 1}\n", "x"])
def test_foreign_file_is_refused_and_untouched(tmp_path, text):
    path = tmp_path / "notes.txt"
    path.write_text(text)
    if "\n" in text:
        with pytest.raises(ValueError, match=r"notes\.txt:1 is not a JSON object"):
            repair_tail(path)
    else:  # a lone unterminated line that is not an object: a torn tail, cut
        repair_tail(path)
        assert path.read_text() == ""
        return
    assert path.read_text() == text


def test_missing_and_empty_files(tmp_path):
    repair_tail(tmp_path / "none.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    repair_tail(empty)
    assert empty.read_text() == "" and read_jsonl(empty) == []


def test_read_jsonl_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"a": 1}) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2 is not valid JSON"):
        read_jsonl(path)
