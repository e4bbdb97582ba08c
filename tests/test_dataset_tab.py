"""The Dataset tab over HTTP: pairs labelled through the Label tab come back from the export endpoints (.jsonl
and .parquet) exactly as chosen, the browse filters and row picker find them, and the quality report counts them."""

from __future__ import annotations

import json

import pytest

from labeling.records import PairRecord, as_messages
from labeling.store import LabelStore
from tests.apprunner import RunningApp
from tests.conftest import free_port

pytestmark = pytest.mark.app

ACTIONS = ["left", "right", "left", "tie", "right", "left", "both_bad", "left"]


def seed(data_dir) -> None:
    store = LabelStore(data_dir)
    store.add_pairs([PairRecord(prompt=as_messages(f"Request {i}: <b>plan</b> item {i}"),
                                response_a=f"first answer {i}", response_b=f"second answer {i} " + "x" * i,
                                strategy="two_samples", model_a="m", model_b="m",
                                category="fraud" if i % 2 else "task_create",
                                intended_label="harmful" if i % 2 else "benign") for i in range(len(ACTIONS) + 2)])
    store.close()


@pytest.fixture(scope="module")
def labelled(tiny_model_dir, tmp_path_factory):
    """An app whose store has 10 pairs, 8 labelled by 'ana' through the Label tab; yields (app, client, expected
    rows by prompt text)."""
    from gradio_client import Client

    data_dir = tmp_path_factory.mktemp("dataset-data")
    seed(data_dir)
    app = RunningApp(["--model", str(tiny_model_dir), "--data-dir", str(data_dir), "--lazy"], free_port(),
                     env={"HF_HUB_OFFLINE": "1"})
    try:
        client = Client(app.url, verbose=False)
        shown = client.predict("ana", api_name="/label_start")
        expected = {}
        for action in ACTIONS:
            prompt, left, right = shown[0], shown[1], shown[2]
            if action in ("left", "right"):
                expected[prompt] = (left, right) if action == "left" else (right, left)
            shown = client.predict("", "", api_name=f"/label_{action}")
            assert shown[-1].startswith("Saved."), shown
        app.data_dir = data_dir
        yield app, client, expected
    finally:
        app.stop()


def as_pairs(rows):
    return {row["prompt"][-1]["content"]: (row["chosen"][0]["content"], row["rejected"][0]["content"])
            for row in rows}


def test_jsonl_export_matches_what_was_labelled(labelled):
    app, client, expected = labelled
    path, message = client.predict(1, api_name="/dataset_export_jsonl")
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    assert as_pairs(rows) == expected
    assert all(row["labelers"] == ["ana"] for row in rows)
    assert f"Exported {len(expected)} preference rows" in message
    assert "1 tie" in message and "1 both bad" in message and "2 unlabeled" in message
    assert list((app.data_dir / "exports").glob("preferences-*.jsonl"))


def test_parquet_export_matches_what_was_labelled(labelled):
    import pandas as pd

    _, client, expected = labelled
    path, _ = client.predict(1, api_name="/dataset_export_parquet")
    assert path.endswith(".parquet")
    frame = pd.read_parquet(path)
    rows = [{"prompt": list(r.prompt), "chosen": list(r.chosen), "rejected": list(r.rejected)}
            for r in frame.itertuples()]
    assert as_pairs(rows) == expected


def test_export_with_too_few_labelers_is_a_clear_error(labelled):
    from gradio_client.exceptions import AppError

    _, client, _ = labelled
    with pytest.raises(AppError, match="No usable labels to export.*too few votes.*lower"):
        client.predict(2, api_name="/dataset_export_jsonl")


def browse(client, view="raw pairs", category="", intended="", labeler="", resolution="", search=""):
    table, note, *_ = client.predict(view, 1, category, intended, labeler, resolution, search,
                                     api_name="/dataset_browse")
    return table, note


def test_browse_filters_and_row_picker(labelled):
    _, client, expected = labelled
    table, note = browse(client)
    assert note.startswith("10 of 10 raw pairs match")
    resolution = table["headers"].index("resolution")
    assert sorted(row[resolution] for row in table["data"]) == sorted(
        ["majority"] * len(expected) + ["tie", "both_bad", "unlabeled", "unlabeled"])

    table, note = browse(client, resolution="tie")
    assert note.startswith("1 of 10")
    table, _ = browse(client, category="fraud")
    assert {row[table["headers"].index("category")] for row in table["data"]} == {"fraud"}
    assert len(table["data"]) == 5
    _, note = browse(client, labeler="ana")
    assert note.startswith("8 of 10")
    _, note = browse(client, labeler="nobody")
    assert note.startswith("0 of 10")

    prompt = next(iter(expected))
    table, note = browse(client, view="preference rows", search=prompt.split(":")[0] + ":")
    assert note.startswith(f"1 of {len(expected)} preference rows match"), note
    shown_prompt, chosen, rejected = client.predict(1, api_name="/dataset_row")
    assert (shown_prompt, (chosen, rejected)) == (prompt, expected[prompt])
    assert "<b>plan</b>" in shown_prompt  # plain text, not rendered

    table, _ = browse(client, view="preference rows", intended="harmful")
    harmful = {row[table["headers"].index("prompt")] for row in table["data"]}
    assert harmful and all(int(p.split(":")[0].split()[1]) % 2 for p in harmful)


def test_row_picker_outside_the_list_is_refused(labelled):
    from gradio_client.exceptions import AppError

    _, client, _ = labelled
    browse(client, resolution="tie")
    with pytest.raises(AppError, match="Row 5 does not exist: pick 1 to 1"):
        client.predict(5, api_name="/dataset_row")


def test_quality_summary_and_key_numbers(labelled):
    _, client, expected = labelled
    numbers, summary, *_ = client.predict(1, api_name="/dataset_refresh")
    values = dict(tuple(row) for row in numbers["data"])
    assert values["pairs"] == "10"
    assert values["labels (active)"] == str(len(ACTIONS))
    assert values["exported rows"] == str(len(expected))
    assert values["labels by ana"] == str(len(ACTIONS))
    assert summary.startswith(f"Rows: {len(expected)}")
    assert f"Votes by labeler: ana {len(ACTIONS)}" in summary
