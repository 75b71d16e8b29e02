"""The examples run and compute what they say."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import torch

from pcattn.nn.dense import dense_aggregate, dense_normalize, multiplicity

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_three_modalities_one_layer_matches_dense():
    layer, results = runpy.run_path(str(EXAMPLES / "three_modalities.py"))["run"]()
    assert set(results) == {"image", "points", "graph"}
    assert results["image"]["image"].shape == (1, 16, 24, 32)
    sizes = {"image": 24 * 32, "points": 2048, "graph": 34}
    f = layer.similarity
    for name, r in results.items():
        y, ei, w, x = r["y"], r["edge_index"], r["weights"], r["x"]
        n = sizes[name]
        assert y.shape == (n, 16) and w.shape == (ei.size(1), 4)
        sums = torch.zeros(n, 4).index_add_(0, ei[1], w)
        torch.testing.assert_close(sums, torch.ones(n, 4))
        with torch.no_grad():  # the same layer, written densely
            q, k = f.query(x).view(n, 4, 4), f.key(x).view(n, 4, 4)
            s = torch.einsum("ihd,jhd->hij", q, k) / 2.0  # (H, N, N), 1/sqrt(d) with d = 4
            a = dense_normalize(s, multiplicity(ei, n, n, dtype=torch.float32), "softmax")
            ref = dense_aggregate(a, layer.value.lin(x).view(n, 4, 4)).reshape(n, 16)
        torch.testing.assert_close(y, ref + layer.bias, atol=1e-5, rtol=1e-5)


def test_three_modalities_script_prints_a_line_per_modality():
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "three_modalities.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert [ln.split(":")[0].strip() for ln in lines] == ["image", "points", "graph"]
    assert "768 nodes" in lines[0] and "2048 nodes" in lines[1] and "34 nodes" in lines[2]
