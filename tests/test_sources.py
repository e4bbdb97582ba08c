"""Prompt import from uploads, typed text and (offline) the Hub: every format, and the bad inputs users send."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from labeling.sources import SourceError, import_prompts, parse_typed

REPO = Path(__file__).resolve().parents[1]


def texts(result):
    return [p.text for p in result.prompts]


# ------------------------------------------------------------------ formats


def test_csv_with_optional_columns(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text('prompt,category,intended_label,reference\n'
                    '"Create a task to renew my passport",task_create,benign,Sure: task added.\n'
                    '"Track my ex, please",privacy_stalking,harmful,\n', encoding="utf-8")
    result = import_prompts(path)
    assert texts(result) == ["Create a task to renew my passport", "Track my ex, please"]
    first, second = result.prompts
    assert (first.category, first.intended_label, first.reference) == ("task_create", "benign", "Sure: task added.")
    assert (second.intended_label, second.reference) == ("harmful", None)
    assert first.source == "upload:prompts.csv"
    assert result.skipped == [] and result.format == "csv"
    assert "Imported 2 prompts" in result.message


def test_csv_quoted_multiline_and_semicolon_delimiter():
    data = b'question;category\n"line one\nline two";everyday\nsecond;everyday\n'
    result = import_prompts(data, filename="q.csv")
    assert texts(result) == ["line one\nline two", "second"]


def test_tsv_and_instruction_with_input_column():
    data = b"instruction\tinput\nSummarise this\tThe meeting moved to Friday.\nSay hi\t\n"
    result = import_prompts(data, filename="alpaca.tsv")
    assert texts(result) == ["Summarise this\n\nThe meeting moved to Friday.", "Say hi"]


def test_jsonl_with_messages_and_label_column():
    rows = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Plan my week"}],
         "label": "safe"},
        {"messages": [{"role": "user", "content": "Hack my ex's email"},
                      {"role": "assistant", "content": "I can't help with that."}], "label": "unsafe"},
    ]
    data = "\n".join(json.dumps(r) for r in rows).encode()
    result = import_prompts(data, filename="chats.jsonl")
    assert [p.messages[-1]["content"] for p in result.prompts] == ["Plan my week", "Hack my ex's email"]
    assert result.prompts[0].messages[0] == {"role": "system", "content": "Be brief."}
    assert [p.intended_label for p in result.prompts] == ["benign", "harmful"]
    # a trailing assistant turn is the written reference, not part of the prompt
    assert result.prompts[1].reference == "I can't help with that."
    assert result.prompts[1].messages[-1]["role"] == "user"


def test_json_array_and_format_sniffed_from_bytes_without_name():
    result = import_prompts(json.dumps([{"text": "one"}, "two"]).encode())
    assert texts(result) == ["one", "two"]
    result = import_prompts(b'{"prompt": "a"}\n{"prompt": "b"}\n')
    assert texts(result) == ["a", "b"] and result.format == "jsonl"


def test_txt_one_prompt_a_line_blank_lines_ignored(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("Schedule lunch with Marco\n\n   \nKill the stuck deploy process\n", encoding="utf-8")
    result = import_prompts(path)
    assert texts(result) == ["Schedule lunch with Marco", "Kill the stuck deploy process"]
    assert all(p.intended_label is None and p.category == "uncategorised" for p in result.prompts)


def test_parquet_with_messages_column(tmp_path):
    import pandas as pd

    path = tmp_path / "p.parquet"
    pd.DataFrame({
        "messages": [[{"role": "user", "content": "Book a venue"}], [{"role": "user", "content": "Order toner"}]],
        "category": ["task_create", "task_create"],
    }).to_parquet(path)
    result = import_prompts(path)
    assert texts(result) == ["Book a venue", "Order toner"]
    assert result.format == "parquet"


def test_parquet_from_bytes_detected_by_magic(tmp_path):
    import pandas as pd

    path = tmp_path / "x.parquet"
    pd.DataFrame({"prompt": ["hello"]}).to_parquet(path)
    assert texts(import_prompts(path.read_bytes())) == ["hello"]


def test_column_names_are_case_insensitive():
    result = import_prompts(b"Prompt,Category\nhi there,everyday\n", filename="x.csv")
    assert texts(result) == ["hi there"] and result.prompts[0].category == "everyday"


# ------------------------------------------------------------------ encodings


def test_utf8_bom_and_utf16_bom_are_read():
    body = "prompt\nCafé meeting notes\n"
    for data in (b"\xef\xbb\xbf" + body.encode("utf-8"), body.encode("utf-16"), body.encode("utf-16-be")):
        if data[:2] not in (b"\xff\xfe", b"\xfe\xff", b"\xef\xbb"):
            data = b"\xfe\xff" + data  # utf-16-be codec writes no BOM; add one
        result = import_prompts(data, filename="bom.csv")
        assert texts(result) == ["Café meeting notes"]


def test_latin1_file_is_refused_with_a_clear_message():
    with pytest.raises(SourceError, match="not valid UTF-8.*Save it as UTF-8"):
        import_prompts("prompt\nCafé\n".encode("latin-1"), filename="old.csv")


def test_utf16_without_bom_and_binary_files_are_refused():
    with pytest.raises(SourceError, match="binary"):
        import_prompts("prompt\nhello\n".encode("utf-16-le"), filename="x.csv")
    with pytest.raises(SourceError, match="binary"):
        import_prompts(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", filename="photo.txt")


# ------------------------------------------------------------------ whole-file errors


@pytest.mark.parametrize("data", [b"", b"   \n\n", b"\xef\xbb\xbf"])
def test_empty_file_is_an_error(data):
    with pytest.raises(SourceError, match="empty"):
        import_prompts(data, filename="empty.csv")


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        import_prompts(tmp_path / "nope.csv")


def test_no_prompt_column_lists_what_was_found():
    with pytest.raises(SourceError, match=r"no prompt column.*'query'.*prompt, instruction"):
        import_prompts(b"query,answer\nhi,hello\n", filename="x.csv")
    with pytest.raises(SourceError, match="no prompt column"):
        import_prompts(b'{"query": "hi"}\n', filename="x.jsonl")


def test_header_only_csv_is_an_error():
    with pytest.raises(SourceError, match="no rows"):
        import_prompts(b"prompt,category\n", filename="x.csv")


def test_oversized_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "big.txt"
    path.write_bytes(b"a prompt\n" * 2000)
    with pytest.raises(SourceError, match=r"limit is 10 KB"):
        import_prompts(path, max_bytes=10 * 1024)
    with pytest.raises(SourceError, match="limit is"):
        import_prompts(path.read_bytes(), filename="big.txt", max_bytes=10 * 1024)


def test_spreadsheet_and_unknown_extensions_are_refused():
    with pytest.raises(SourceError, match="save it as CSV"):
        import_prompts(b"PK\x03\x04", filename="book.xlsx")
    with pytest.raises(SourceError, match="not supported"):
        import_prompts(b"hello", filename="notes.docx")


def test_damaged_parquet_is_an_error():
    with pytest.raises(SourceError, match="Parquet"):
        import_prompts(b"PAR1 this is not really parquet PAR1", filename="x.parquet")


# ------------------------------------------------------------------ row-level problems


def test_row_problems_are_skipped_with_row_numbers():
    data = ("prompt,intended_label\n"
            "Create a task to pay rent,benign\n"  # row 2
            ",benign\n"  # row 3: empty prompt
            "Create a task to pay rent,benign\n"  # row 4: duplicate of row 2
            f"{'x' * 50},benign\n"  # row 5: too long
            "Buy milk,maybe\n"  # row 6: bad label
            "Buy bread,\n")  # row 7: fine, label unknown
    result = import_prompts(data.encode(), filename="rows.csv", max_prompt_chars=40)
    assert texts(result) == ["Create a task to pay rent", "Buy bread"]
    reasons = dict(result.skipped)
    assert sorted(reasons) == [3, 4, 5, 6]
    assert "empty" in reasons[3]
    assert "duplicate of row 2" in reasons[4]
    assert "50 characters" in reasons[5] and "40" in reasons[5]
    assert "'maybe'" in reasons[6]
    assert "Skipped 4 rows" in result.message and "row 3" in result.message


def test_duplicates_ignore_surrounding_whitespace():
    result = import_prompts(b"Plan my week\n  Plan my week  \n", filename="d.txt")
    assert texts(result) == ["Plan my week"]
    assert result.skipped == [(2, "duplicate of row 1")]


def test_bad_jsonl_lines_are_skipped_but_good_ones_kept():
    data = b'{"prompt": "good"}\n{not json}\n[1, 2]\n{"prompt": "also good"}\n'
    result = import_prompts(data, filename="x.jsonl")
    assert texts(result) == ["good", "also good"]
    assert [n for n, _ in result.skipped] == [2, 3]


def test_malformed_messages_are_skipped():
    rows = [{"messages": [{"role": "user", "content": "ok"}]},
            {"messages": "not json"},
            {"messages": [{"role": "wizard", "content": "x"}]},
            {"messages": [{"role": "assistant", "content": "only an answer"}]}]
    result = import_prompts("\n".join(json.dumps(r) for r in rows).encode(), filename="m.jsonl")
    assert texts(result) == ["ok"]
    assert [n for n, _ in result.skipped] == [2, 3, 4]


def test_html_in_prompts_is_kept_as_text():
    prompt = '<script>alert("x")</script> Create a <b>task</b> &amp; notes'
    result = import_prompts(json.dumps({"prompt": prompt}).encode(), filename="h.jsonl")
    assert texts(result) == [prompt]


def test_generic_label_column_with_other_meaning_is_ignored_not_fatal():
    result = import_prompts(b"text,label\nfirst,0\nsecond,1\n", filename="x.csv")
    assert texts(result) == ["first", "second"]
    assert all(p.intended_label is None for p in result.prompts)
    assert "ignored" in result.message


def test_max_rows_caps_and_says_so():
    data = "\n".join(f"prompt number {i}" for i in range(30)).encode()
    result = import_prompts(data, filename="many.txt", max_rows=10)
    assert len(result.prompts) == 10
    assert result.truncated_rows == 20
    assert "first 10 rows" in result.message


def test_all_rows_bad_gives_an_empty_result_that_says_so():
    result = import_prompts(b"prompt,intended_label\nhi,nonsense\n", filename="x.csv")
    assert result.prompts == [] and result.skipped
    assert "Nothing was imported" in result.message


# ------------------------------------------------------------------ typed and Hub


def test_typed_prompts_one_per_line():
    result = parse_typed("Plan my week\n\nKill the stuck deploy process\nPlan my week\n", category="mine",
                         intended_label="benign")
    assert texts(result) == ["Plan my week", "Kill the stuck deploy process"]
    assert all(p.source == "typed" and p.category == "mine" and p.intended_label == "benign" for p in result.prompts)
    assert result.skipped == [(4, "duplicate of row 1")]
    with pytest.raises(SourceError, match="No prompts"):
        parse_typed("  \n ")
    with pytest.raises(SourceError, match="benign, harmful"):
        parse_typed("x", intended_label="bad")


def test_hub_dataset_when_hub_unreachable_is_a_clear_error(tmp_path):
    # A fresh process: huggingface_hub reads HF_HUB_OFFLINE when first imported.
    script = textwrap.dedent("""
        from labeling.sources import SourceError, load_hub_dataset
        try:
            load_hub_dataset("someone/prompts")
        except SourceError as exc:
            print("SOURCE_ERROR:", exc)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=240)
    assert "SOURCE_ERROR: Could not reach the Hugging Face Hub" in out.stdout, out.stderr[-2000:]


def test_hub_dataset_id_is_checked_before_any_network():
    from labeling.sources import load_hub_dataset

    with pytest.raises(SourceError, match="owner/name"):
        load_hub_dataset("../local/folder")
