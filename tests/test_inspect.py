"""`geoembed inspect` recognises every artefact and says what it holds."""

from __future__ import annotations

import pandas as pd
import pytest

from geoembed.cli import main
from geoembed.enrich import enrich_file
from geoembed.inspect import describe


def test_inspect_bundle_and_enriched_table(tmp_path, bundle_path, capsys):
    info = describe(bundle_path)
    assert info["artefact"] == "model bundle" and info["embedding_dim"] == 4
    assert info["fingerprint"].startswith("sha256:")
    src = tmp_path / "t.parquet"
    pd.DataFrame({"lon": [-34.87, -34.86], "lat": [-8.0, -7.99], "x": [1, 2]}).to_parquet(src)
    enrich_file(bundle_path, src, tmp_path / "out.parquet")
    table = describe(tmp_path / "out.parquet")
    assert table["artefact"] == "enriched table" and table["rows"] == 2
    assert table["metadata"]["geoembed"]["bundle"]["fingerprint"] == info["fingerprint"]
    assert main(["inspect", str(tmp_path / "out.parquet")]) == 0
    assert "emb_3" in capsys.readouterr().out


def test_inspect_rejects_what_it_does_not_know(tmp_path, capsys):
    (tmp_path / "notes.md").write_text("hi")
    assert main(["inspect", str(tmp_path / "notes.md")]) == 1
    assert "not a geoembed artefact" in capsys.readouterr().err
    # .txt is a CSV for every stage (enrich, evaluate, inspect): an unreadable one is a clear error
    (tmp_path / "empty.txt").write_text("")
    assert main(["inspect", str(tmp_path / "empty.txt")]) == 1
    assert "cannot read CSV file" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(Exception, match="holds no geoembed artefact"):
        describe(tmp_path)
