"""`posterior --help` answers without importing torch, and every option says what it does."""

import subprocess
import sys

import pytest

from posterior import cli

HELP = """
import sys
import posterior.cli as cli
try:
    cli.main({argv!r})
except SystemExit:
    pass
print("torch imported:", "torch" in sys.modules)
"""


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["demo", "--help"], ["train", "--help"]])
def test_help_does_not_import_torch(argv):
    done = subprocess.run([sys.executable, "-c", HELP.format(argv=argv)], capture_output=True, text=True, check=True)
    assert "usage: posterior" in done.stdout
    assert done.stdout.strip().endswith("torch imported: False"), done.stdout[-500:]


def test_every_option_has_a_description_and_run_points_at_the_cli_page(capsys):
    for command in ("demo", "run", "benchmark", "train"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = capsys.readouterr().out
        options = text.split("options:", 1)[1]
        lines = options.splitlines()
        bare = [  # an option with no text beside it nor on the next line (argparse wraps long ones)
            line.strip()
            for i, line in enumerate(lines)
            if line.strip().startswith("-")
            and len(line.strip().split("  ")) == 1
            and not (i + 1 < len(lines) and lines[i + 1].strip() and not lines[i + 1].strip().startswith("-"))
        ]
        assert not bare, f"{command}: options without a description: {bare}"
        if command == "run":
            assert "docs/cli.md" in text
