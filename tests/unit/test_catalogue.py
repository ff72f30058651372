"""The item catalogue: catalogue.json reading and writing, the derivation from candidate-list
files (``sdpo-prepare catalogue``), and the errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdpo_lightning.data.catalogue import (
    Catalogue,
    catalogue_from_candidate_lists,
    load_catalogue,
    write_catalogue,
)
from sdpo_lightning.data.prepare.cli import main as prepare_main
from sdpo_lightning.data.records import DataFormatError
from tests.conftest import LASTFM, record, require_shared


def test_write_then_load_round_trips(tmp_path):
    cat = Catalogue(["Heat", "Heat Wave", "Iron Drum"], ["1", "2", None], [3, 0, 1])
    path = write_catalogue(cat, tmp_path / "catalogue.json")
    again = load_catalogue(path)
    assert again.titles == cat.titles and again.item_ids == ["1", "2", None]
    assert again.popularity.tolist() == [3, 0, 1] and again.index["Heat Wave"] == 1
    assert path.read_bytes() == write_catalogue(again, tmp_path / "b.json").read_bytes()
    # self-information with add-one smoothing: p = (pop + 1) / (4 + 3)
    np.testing.assert_allclose(again.self_information(), -np.log2(np.array([4, 1, 2]) / 7))


def test_a_list_of_titles_is_a_catalogue_without_popularity(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(["A", "B"]))
    cat = load_catalogue(path)
    assert len(cat) == 2 and not cat.has_popularity and "A" in cat


@pytest.mark.parametrize(
    "items, message",
    [
        ([{"title": "A"}, {"title": " "}], "record 1: empty title ' '"),
        (
            [{"title": "A"}, {"title": "B"}, {"title": "A"}],
            "record 2: duplicate title 'A' \\(also record 0\\)",
        ),
        (
            [{"title": "Heroes"}, {"title": "heroes"}],
            "record 1: title 'heroes' differs from record 0 \\('Heroes'\\) only in letter case",
        ),
        (
            [{"title": "A", "item_id": "1"}, {"title": "B", "item_id": "1"}],
            "record 1: duplicate item_id '1'",
        ),
        (
            [{"title": "A", "popularity": 1}, {"title": "B"}],
            "record 1: popularity is given for some items",
        ),
        ([{"title": "A", "popularity": -1}], "record 0: popularity must be an integer >= 0"),
        ([{"title": 5}], "record 0: title must be a string"),
        ([{"name": "A"}], "record 0: unknown key"),
        ([], "holds no item"),
        ({"title": "A"}, "expected a JSON list of items"),
    ],
)
def test_bad_catalogue_files_name_file_record_and_reason(tmp_path, items, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(items))
    with pytest.raises(DataFormatError, match=f"bad.json.*{message}"):
        load_catalogue(path)


def test_unreadable_catalogue_files(tmp_path):
    with pytest.raises(DataFormatError, match="missing.json: catalogue file not found"):
        load_catalogue(tmp_path / "missing.json")
    (tmp_path / "m.json").write_text("[{")
    with pytest.raises(DataFormatError, match="m.json: malformed JSON"):
        load_catalogue(tmp_path / "m.json")


def test_titles_that_differ_in_punctuation_are_distinct_items():
    cat = Catalogue(["IRA", "Ira!", "Muse"])  # the one such pair of the public LastFM data
    assert cat.match("IRA") == 0 and cat.match(" Ira! ") == 1  # the exact spelling first
    assert cat.match("ira") is None  # normalized, two items: ambiguous, invalid
    assert cat.match("muse.") == 2 and cat.match("Muse and IRA") is None


def test_check_targets_names_the_split_file_and_record():
    cat = Catalogue(["A", "B"], source="cat.json")
    cat.check_targets(["A", None, "B"], "test.json")
    with pytest.raises(
        DataFormatError, match="test.json, record 1: target 'C' is not in the catalogue cat.json"
    ):
        cat.check_targets(["A", "C"], "test.json")


def test_derived_from_candidate_lists(write_json):
    train = write_json(
        [record(("H1", "H2"), ("A", "B", "C"), "B"), record(("H2",), ("B", "D"), "B")], "train.json"
    )
    test = write_json([record(("A",), ("E", "A"), "E")], "test.jsonl")
    cat = catalogue_from_candidate_lists([train, test], train=train)
    assert cat.titles == ["A", "B", "C", "D", "E", "H1", "H2"]
    assert (
        dict(zip(cat.titles, cat.popularity.tolist(), strict=False))["B"] == 2
        and int(cat.popularity.sum()) == 2
    )
    assert catalogue_from_candidate_lists([train]).popularity is None


def test_derivation_refuses_case_only_duplicates_naming_both_places(write_json):
    a = write_json([record(("The Who",), ("X", "Y"), "X")], "train.json")
    b = write_json([record(("Y",), ("the who", "X"), "X")], "valid.json")
    with pytest.raises(
        DataFormatError,
        match="valid.json, record 0: title 'the who' differs from 'The Who' "
        r"\(.*train.json, record 0\) only in letter case",
    ):
        catalogue_from_candidate_lists([a, b])


def test_sdpo_prepare_catalogue_command(write_json, tmp_path, capsys):
    train = write_json([record(("H1",), ("A", "B"), "B")], "train.json")
    valid = write_json([record(("H1",), ("A", "C"), "C")], "valid.json")
    out = tmp_path / "out" / "catalogue.json"
    assert prepare_main(["catalogue", str(train), str(valid), "--out", str(out)]) == 0
    assert "4 items from 2 file(s); popularity from" in capsys.readouterr().out
    assert [r["popularity"] for r in json.loads(out.read_text())] == [0, 1, 0, 0]
    bad = write_json([record(("H1",), ("A", "B"), "Z")], "bad.json")
    assert prepare_main(["catalogue", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert (
        "sdpo-prepare catalogue: error:" in err
        and "bad.json, record 0: target 'Z' is not among" in err
    )


def test_public_lastfm_catalogue():
    train = require_shared(LASTFM / "train.json")
    cat = catalogue_from_candidate_lists([train, LASTFM / "valid.json"], train=train)
    assert len(cat) == 4606 and int(cat.popularity.sum()) == 2117
    rows = [r for f in ("train.json", "valid.json") for r in json.loads((LASTFM / f).read_text())]
    history = [h.split("::") if isinstance(h, str) else h for h in (r["historyList"] for r in rows)]
    assert len(rows) == 2767  # the history rule's premise: no target in its own history
    assert not any(r["trueSelection"] in h for r, h in zip(rows, history, strict=True))
