"""Training logs of ptb_word_lm.py side by side, epoch by epoch: each log's train and valid perplexity, then the
test perplexity (in the valid columns), with each later log's difference from the first in percent. A markdown
table, as docs/reproducing.md shows them. Each log can be given a label: LABEL=PATH.
Usage, from the project root: python results/side_by_side.py fp32=results/medium.log bf16=results/medium-fast-bf16.log"""
import os
import re
import sys

LINE = re.compile(r"^(?:Epoch: (\d+) (Train|Valid) Perplexity|(Test) Perplexity): ([\d.]+)$")


def read_log(path):
    """{(epoch, "Train" | "Valid") or (None, "Test"): perplexity}; a line written again (a rerun) replaces the one
    before."""
    numbers = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            match = LINE.match(line.strip())
            if match:
                epoch, split, test, value = match.groups()
                numbers[(int(epoch) if epoch else None, split or test)] = float(value)
    return numbers


def table(labelled_paths):
    """The table of logs given as PATH or LABEL=PATH."""
    names = [p.partition("=")[0] if "=" in p else os.path.basename(p) for p in labelled_paths]
    logs = [read_log(p.partition("=")[2] if "=" in p else p) for p in labelled_paths]
    epochs = sorted({epoch for log in logs for epoch, _ in log if epoch is not None})
    header = ["epoch"] + [f"{split} {name}" for split in ("train", "valid") for name in names]
    header += [f"valid {name} vs {names[0]}" for name in names[1:]]
    rows = [[str(epoch)] + [cell(log.get((epoch, split))) for split in ("Train", "Valid") for log in logs] +
            [change(log.get((epoch, "Valid")), logs[0].get((epoch, "Valid"))) for log in logs[1:]]
            for epoch in epochs]
    rows.append(["test"] + [""] * len(logs) + [cell(log.get((None, "Test"))) for log in logs] +
                [change(log.get((None, "Test")), logs[0].get((None, "Test"))) for log in logs[1:]])
    return "\n".join("| " + " | ".join(row) + " |" for row in [header, ["---"] * len(header), *rows])


def cell(value):
    return "" if value is None else f"{value:.3f}"


def change(value, reference):
    return "" if value is None or reference is None else f"{100 * (value / reference - 1):+.2f}%"


if __name__ == "__main__":
    print(table(sys.argv[1:]))
