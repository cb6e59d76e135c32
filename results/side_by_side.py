"""Training logs of ptb_word_lm.py side by side, epoch by epoch: each log's train and valid perplexity, then the
test perplexity (in the valid columns), and each later log's valid and test perplexity against the first's, in
percent. A markdown table, as docs/reproducing.md shows them. A log is given as PATH, or as LABEL=PATH to head
its columns with LABEL instead of its file name.
Usage, from the project root: python results/side_by_side.py fp32=results/medium.log bf16=results/medium-fast-bf16.log"""
import os
import re
import sys

LINE = re.compile(r"^(?:Epoch: (\d+) (Train|Valid) Perplexity|(Test) Perplexity): ([\d.]+|inf|nan)$")


def read_log(path):
    """{(epoch, "Train" | "Valid") or (None, "Test"): perplexity} of the run the log ends with: a run started
    again from an earlier epoch (a new save_path, or a rerun after its folder was removed) replaces what the log
    holds from that epoch on."""
    numbers = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            match = LINE.match(line.strip())
            if not match:
                continue
            epoch, split, test, value = match.groups()
            if split == "Train":
                numbers = {key: v for key, v in numbers.items() if key[0] is not None and key[0] < int(epoch)}
            numbers[(int(epoch) if epoch else None, split or test)] = float(value)
    return numbers


def labelled(arg):
    """(label, path) of a PATH or LABEL=PATH argument."""
    if os.path.isfile(arg) or "=" not in arg:
        return os.path.basename(arg), arg
    label, _, path = arg.partition("=")
    return label, path


def table(args):
    """The markdown table of the logs given as PATH or LABEL=PATH."""
    names, paths = zip(*map(labelled, args))
    logs = [read_log(p) for p in paths]
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
    if len(sys.argv) < 2:
        sys.exit(__doc__.splitlines()[-1])
    try:
        print(table(sys.argv[1:]))
    except OSError as e:
        sys.exit(f"error: cannot read {e.filename} ({e.strerror}): give the logs as PATH or LABEL=PATH")
