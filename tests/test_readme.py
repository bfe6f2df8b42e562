"""README.md runs as pasted: its Python blocks execute in order and print what the page says they print.

Each ```python block is executed in one shared namespace (as a reader pasting them into one session
would), in a temporary working directory, with ``torch.set_num_threads(1)``. The ```text block that
follows a Python block (before the next one) is its printed output: every block that prints has one,
and a block without one prints nothing. Outputs are compared token by token: words exactly, numbers
within ``REL_TOL`` of the quoted value or, for decimals, one unit of its last printed digit,
whichever is larger (every draw is seeded and float64 on the CPU, so the numbers repeat exactly on
one machine; the tolerance absorbs the last-bit differences of other CPUs, not a change of result).
Decimal numbers in the prose of the quick start must be printed by the Python block above them, and
the posterior warnings that a block emits must be the ones its comments name (``# DivergenceWarning``).

When a change of the library moves a number on purpose, ``.venv/bin/python tests/test_readme.py``
prints every block's output to paste into README.md (and check the prose against).
"""

import contextlib
import io
import re
import tempfile
import warnings
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"
REL_TOL = 0.05
NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e[+-]?\d+)?")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```[ \t]*$", re.M | re.S)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced block, in order."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def python_blocks(text: str) -> list[tuple[str, str | None]]:
    """Each ```python block with the ```text block that follows it before the next Python block."""
    pairs: list[list] = []
    for language, body in fenced_blocks(text):
        if language == "python":
            pairs.append([body, None])
        elif language == "text" and pairs and pairs[-1][1] is None:
            pairs[-1][1] = body
    return [(code, output) for code, output in pairs]


def _unit(quoted: str) -> float:
    """One unit of the last printed digit of ``quoted`` (``1.02e+03`` -> 10), the rounding of a
    printed value; 0 for integers (counts, shapes, steps: equal up to ``REL_TOL``)."""
    mantissa, _, exponent = quoted.lower().partition("e")
    if "." not in mantissa:
        return 0.0
    return 10.0 ** (int(exponent or 0) - len(mantissa.partition(".")[2]))


def close(printed: str, quoted: str) -> bool:
    """Whether the number ``printed`` is within the tolerance of ``quoted`` (both as strings)."""
    p, q = float(printed), float(quoted)
    return abs(p - q) <= max(REL_TOL * abs(q), _unit(quoted))


def _parts(text: str) -> list[str]:
    """Whitespace-separated tokens, each split into its numbers and the text around them."""
    parts = []
    for token in text.split():
        parts += [part for part in re.split(f"({NUMBER.pattern})", token) if part]
    return parts


def differences(printed: str, quoted: str) -> list[str]:
    """Where ``printed`` departs from ``quoted``: words must match exactly, numbers by :func:`close`."""
    got, want = _parts(printed), _parts(quoted)
    out = []
    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        numbers = NUMBER.fullmatch(g) and NUMBER.fullmatch(w)
        if (numbers and not close(g, w)) or (not numbers and g != w):
            context = " ".join(want[max(0, i - 6) : i + 1])
            out.append(f"printed {g!r} where README.md says {w!r} (after: ...{context})")
    if len(got) != len(want):
        out.append(f"printed {len(got)} tokens, README.md quotes {len(want)}")
    return out


def _warnings_named(code: str) -> set[str]:
    """Warning classes named in the comments of ``code``."""
    comments = " ".join(line.partition("#")[2] for line in code.splitlines() if "#" in line)
    return set(re.findall(r"\b(\w+Warning)\b", comments))


def quick_start_prose(text: str) -> list[tuple[int, str]]:
    """The prose of the ``## Quick start`` section (inline code removed), as ``(k, paragraph text)``
    pieces between fenced blocks, ``k`` the number of Python blocks of README.md above the piece."""
    start = text.index("## Quick start")
    end = text.index("\n## ", start + 1)
    pieces, seen, position = [], 0, 0
    for match in [*FENCE.finditer(text), None]:
        stop = match.start() if match else len(text)
        lo, hi = max(position, start), min(stop, end)
        if lo < hi:
            pieces.append((seen, re.sub(r"`[^`\n]*`", " ", text[lo:hi])))
        if match:
            seen += match.group(1) == "python"
            position = match.end()
    return pieces


def test_comparison_fails_on_drift():
    """The comparison is not vacuous: a drifted number, a changed word or a missing line fails it."""
    quoted = "DPS  sliced W1 6.40  mean error 0.657\nfinal ESS 302-480, sigma=1.02e+03"
    assert not differences("DPS sliced W1 6.43 mean error 0.66\nfinal ESS 305-481, sigma=1.03e+03", quoted)
    assert differences("DPS sliced W1 7.40 mean error 0.657\nfinal ESS 302-480, sigma=1.02e+03", quoted)
    assert differences("DPS sliced W1 6.40 mean error 0.657\nfinal ESS 302-480, sigma=2.02e+03", quoted)
    assert differences("DPS sliced W2 6.40 mean error 0.657\nfinal ESS 302-480, sigma=1.02e+03", quoted)
    assert differences("DPS sliced W1 6.40 mean error 0.657", quoted)


def test_readme_python_blocks_run_and_print_what_readme_says(tmp_path, monkeypatch):
    """Every Python block of README.md runs, in order, and prints its quoted output (about 30 s)."""
    from posterior.diagnostics import PosteriorWarning

    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)  # the quick start saves run.safetensors in the working directory
    text = README.read_text()
    blocks = python_blocks(text)
    assert len(blocks) >= 4, f"README.md has {len(blocks)} Python blocks, expected the quick start's and more"
    namespace: dict = {"__name__": "__readme__"}
    printed_numbers: list[list[str]] = []  # per block
    failures = []
    for i, (code, quoted) in enumerate(blocks, 1):
        stdout = io.StringIO()
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(stdout):
            warnings.simplefilter("always")
            exec(compile(code, f"README.md python block {i}", "exec"), namespace)
        printed = stdout.getvalue()
        printed_numbers.append(NUMBER.findall(printed))
        first_line = code.strip().splitlines()[0]
        if quoted is None:
            if printed.strip():
                failures.append(f"block {i} ({first_line}) prints, but README.md shows no output:\n{printed}")
        else:
            failures += [f"block {i} ({first_line}): {d}" for d in differences(printed, quoted)]
        emitted = {type(w.message).__name__ for w in caught if isinstance(w.message, PosteriorWarning)}
        if emitted != _warnings_named(code):
            failures.append(
                f"block {i} ({first_line}) warned {sorted(emitted)}, its comments name {sorted(_warnings_named(code))}"
            )
    for above, prose in quick_start_prose(text):
        for number in NUMBER.findall(prose):
            if "." in number and not (above and any(close(p, number) for p in printed_numbers[above - 1])):
                failures.append(
                    f"the quick start's prose quotes {number}, which the block above it does not print"
                )
    assert not failures, "\n".join(failures)


if __name__ == "__main__":  # print each block's output, to paste into README.md after a deliberate change
    import os
    import sys

    sys.path.remove(str(Path(__file__).parent))  # tests/posterior would shadow the package
    torch.set_num_threads(1)
    os.chdir(tempfile.mkdtemp())
    namespace = {"__name__": "__readme__"}
    for i, (code, _) in enumerate(python_blocks(README.read_text()), 1):
        print(f"--- block {i}")
        exec(compile(code, f"README.md python block {i}", "exec"), namespace)
