"""The generated tables of the documentation agree with the JSON they are rendered from."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "render_docs.py"


def test_docs_tables_match_their_json():
    spec = importlib.util.spec_from_file_location("benchmark_render_docs", SCRIPT)
    render_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render_docs)
    stale = render_docs.rewrite(check=True)
    assert not stale, f"stale tables (run python benchmarks/render_docs.py): {stale}"
