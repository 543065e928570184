"""Artifact tables built from result files: what exists is shown, what is missing is named."""

from burn.artifacts import defense_tradeoff
from burn.cache import write_json


def test_defense_tradeoff_reads_results_and_names_missing(tmp_path):
    d = tmp_path / "smoke" / "synthetic" / "badnets"
    write_json(d / "none.json", {"acc": 0.82, "asr": 0.94, "ra": 0.05})
    write_json(d / "burn.json", {"acc": 0.15, "asr": 0.99, "ra": 0.0})
    write_json(d / "burn_suspect_class.json", {"acc": 0.74, "asr": 0.0002, "ra": 0.81})
    df, missing = defense_tradeoff("smoke", "synthetic", ["badnets", "blended"], ["burn", "nad"],
                                   results_root=tmp_path)
    rows = {r.defense: r for r in df.itertuples()}
    assert list(rows) == ["none", "burn", "burn:suspect_class"]
    assert (rows["burn"].acc, rows["burn"].asr, rows["burn"].opt_in) == (0.15, 0.99, False)
    assert (rows["burn:suspect_class"].asr, rows["burn:suspect_class"].opt_in) == (0.0002, True)
    assert missing == ["badnets/nad", "blended/none", "blended/burn", "blended/nad"]
