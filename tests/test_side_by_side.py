"""results/side_by_side.py, which sets training logs side by side: its reading of a log, its differences, and the
tables of docs/*.md that say they are its output, which must be what it prints for the logs in results/ (as they
are in the working tree: a table of a log still growing fails until it is made again).
Needs neither TensorFlow nor the corpus."""
import glob
import importlib.util
import os
import re
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("side_by_side", os.path.join(ROOT, "results", "side_by_side.py"))
side_by_side = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(side_by_side)

FIRST = """# a header line, then a run stopped and resumed
Epoch: 1 Learning rate: 1.000
0.004 perplexity: 5000.000 speed: 900 wps
Epoch: 1 Train Perplexity: 300.000
Epoch: 1 Valid Perplexity: 200.000
Stopped: stopped by signal 2; saved epoch 2, step 7 to runs/x: rerun the same command to resume
Epoch: 2 Train Perplexity: 150.000
Epoch: 2 Valid Perplexity: 160.000
Test Perplexity: 150.000
"""
# A run that got to its test pass, then the same log's run started again from epoch 1 (its folder removed):
# only the second run's numbers count.
SECOND = """Epoch: 1 Train Perplexity: 330.000
Epoch: 1 Valid Perplexity: 250.000
Epoch: 2 Train Perplexity: 160.000
Epoch: 2 Valid Perplexity: 170.000
Test Perplexity: 166.000
# started again
Epoch: 1 Train Perplexity: 310.000
Epoch: 1 Valid Perplexity: 202.000
Epoch: 2 Train Perplexity: 151.000
Epoch: 2 Valid Perplexity: 156.000
Test Perplexity: 151.500
Epoch: 3 Train Perplexity: inf
"""


def test_a_log_is_read_and_set_beside_another(tmp_path):
    (tmp_path / "a.log").write_text(FIRST, encoding="utf-8")
    (tmp_path / "b.log").write_text(SECOND, encoding="utf-8")
    assert side_by_side.read_log(tmp_path / "a.log") == {(1, "Train"): 300.0, (1, "Valid"): 200.0, (2, "Train"): 150.0,
                                                         (2, "Valid"): 160.0, (None, "Test"): 150.0}
    assert side_by_side.read_log(tmp_path / "b.log") == {(1, "Train"): 310.0, (1, "Valid"): 202.0, (2, "Train"): 151.0,
                                                         (2, "Valid"): 156.0, (3, "Train"): float("inf")}
    (tmp_path / "b.log").write_text(SECOND.replace("Epoch: 3 Train Perplexity: inf\n", ""), encoding="utf-8")
    assert side_by_side.table([f"fp32={tmp_path}/a.log", f"{tmp_path}/b.log"]).split("\n") == [
        "| epoch | train fp32 | train b.log | valid fp32 | valid b.log | valid b.log vs fp32 |",
        "| --- | --- | --- | --- | --- | --- |",
        "| 1 | 300.000 | 310.000 | 200.000 | 202.000 | +1.00% |",
        "| 2 | 150.000 | 151.000 | 160.000 | 156.000 | -2.50% |",
        "| test |  |  | 150.000 | 151.500 | +1.00% |"]


MENTION = re.compile(r"side_by_side\.py\s")
# A command in backticks, on a line of its own before a blank line, then the table.
TABLE_AFTER_COMMAND = re.compile(r"`(python\s+results/side_by_side\.py\s[^`]*)`[ \t]*\r?\n\r?\n((?:\|.*\|(?:\r?\n|$))+)")


def docs_tables():
    """(page, command, table) for each table of docs/*.md right after a side_by_side.py command."""
    found = []
    for page in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))):
        with open(page, encoding="utf-8") as f:
            text = f.read()
        tables = TABLE_AFTER_COMMAND.findall(text)
        # Every command the docs give comes with its table, so that none goes unchecked.
        assert len(tables) == len(MENTION.findall(text)), f"{page}: a side_by_side.py command without its table"
        found += [(os.path.relpath(page, ROOT), command, table) for command, table in tables]
    return found


@pytest.mark.parametrize("page, command, table", [pytest.param(*found, id=f"{found[0]}, table {i + 1}")
                                                  for i, found in enumerate(docs_tables())])
def test_the_docs_tables_are_the_logs(page, command, table):
    # Each log as LABEL=PATH with its path from the project root, labelled as the command labels it.
    args = [f"{label}={os.path.join(ROOT, path)}"
            for label, path in map(side_by_side.labelled, shlex.split(command)[2:])]
    printed = side_by_side.table(args)
    assert table.strip() == printed, f"{page}: the table after `{command}` is not what it prints; make it again"


def test_the_docs_have_such_tables():
    # bf16 against fp32 in docs/reproducing.md, small and medium: had the pattern stopped matching, the test above
    # would check nothing and pass.
    assert len(docs_tables()) >= 2
