"""Candidate-list readers: both formats, and a clear error for every malformed case."""

from __future__ import annotations

import pytest

from sdpo_lightning.data.readers import load_examples
from sdpo_lightning.data.records import DataFormatError
from tests.conftest import record


def test_reads_json_with_string_and_list_history(write_json):
    path = write_json([record(history="x::y::z"), record(history=["p", "q"], user_id=7)])
    res = load_examples(path)
    assert [ex.history for ex in res.examples] == [("x", "y", "z"), ("p", "q")]
    assert res.examples[0].candidates == ("A2", "B2", "C2", "D2")
    assert res.examples[0].target_index == 1
    assert res.examples[1].user_id == "7"


def test_reads_jsonl(write_json):
    path = write_json([record(), record(target="D2")], name="data.jsonl")
    assert [ex.target for ex in load_examples(path).examples] == ["B2", "D2"]


@pytest.mark.parametrize(
    "bad, reason",
    [
        (record(target="Z"), "target 'Z' is not among the 4 candidates"),
        (record(items=("A2", "B2", "A2", "C2")), "duplicate candidate 'A2' at positions 0 and 2"),
        (record(history=[]), "empty history"),
        (record(history=""), "empty history"),
        (record(items=("A2", 3, "B2")), "candidate 1 must be a string, got int"),
        (record(items=("A2", "  ", "B2")), "candidate 1 is an empty title"),
        (record(history=["a", None]), "history item 1 must be a string"),
        (record(target=5), "target must be a string"),
        ({"historyList": ["a"], "itemList": ["b"]}, "missing key(s) trueSelection"),
        ([1, 2], "expected an object, got list"),
    ],
)
def test_bad_record_names_file_record_and_reason(write_json, bad, reason):
    path = write_json([record(), bad])
    with pytest.raises(DataFormatError) as err:
        load_examples(path)
    msg = str(err.value)
    assert str(path) in msg and "record 1" in msg and reason in msg


def test_too_few_candidates_for_k(write_json):
    path = write_json([record(items=("A2", "B2", "C2"))])
    with pytest.raises(
        DataFormatError, match=r"record 0: 3 candidates, fewer than the 4 needed \(K\+1 for K=3"
    ):
        load_examples(path, min_candidates=4)


def test_malformed_json_reports_position(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"historyList": ["a"],,}]')
    with pytest.raises(DataFormatError, match=r"bad.json: malformed JSON .* at line 1, column"):
        load_examples(path)


def test_malformed_jsonl_reports_line_number(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = '{"historyList": "a", "itemList": ["a2", "b2"], "trueSelection": "a2"}'
    path.write_text(good + "\n" + good + "\n{oops\n")
    with pytest.raises(DataFormatError, match=r"bad.jsonl, line 3: malformed JSON"):
        load_examples(path)


def test_not_a_list_and_missing_file(tmp_path):
    path = tmp_path / "obj.json"
    path.write_text('{"historyList": "a"}')
    with pytest.raises(DataFormatError, match="expected a JSON list of records, got dict"):
        load_examples(path)
    with pytest.raises(DataFormatError, match="nope.json: file not found"):
        load_examples(tmp_path / "nope.json")


def test_lenient_skips_and_counts(write_json):
    path = write_json([record(), record(target="Z"), record(history=[]), record()])
    res = load_examples(path, lenient=True)
    assert len(res.examples) == 2
    assert [label for label, _ in res.skipped] == ["record 1", "record 2"]
    assert "not among" in res.skipped[0][1]


def test_all_bad_is_an_error_even_when_lenient(write_json):
    with pytest.raises(DataFormatError, match="no valid records"):
        load_examples(write_json([record(target="Z")]), lenient=True)
