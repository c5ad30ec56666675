"""Atomic outputs: a failed write leaves the previous file as it was and no temporary file behind."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from dfcore.io import load_checkpoint, save_checkpoint, save_figure  # noqa: E402


def test_save_figure_writes_the_format_of_the_suffix_and_closes(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    save_figure(fig, tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
    fig, _ = plt.subplots()
    save_figure(fig, tmp_path / "sub" / "b.pdf")
    assert (tmp_path / "sub" / "b.pdf").read_bytes()[:4] == b"%PDF"


def test_a_failed_save_keeps_the_previous_figure(tmp_path):
    target = tmp_path / "plot.png"
    target.write_bytes(b"previous")
    fig, _ = plt.subplots()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    fig.savefig = broken
    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(fig, target)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]


def test_a_checkpoint_with_canonical_params_loads_weights_only(tmp_path):
    """The workflow hands its scripts canonical params (a dict subclass); a checkpoint whose meta holds them is saved
    with plain dicts, so that ``weights_only`` loading reads it back with the same items."""
    from dfcore.config import ParamDict, canonical_params

    cfg = canonical_params({"steps": 3, "mlp": {"hidden": 8, "layers": [1, 2]}, "shape": (1, 8, 8)})
    assert isinstance(cfg["mlp"], ParamDict)
    save_checkpoint({"model": {"kind": "denoiser"}, "meta": {"config": cfg}}, tmp_path / "m.pt")
    loaded = load_checkpoint(tmp_path / "m.pt")["meta"]["config"]
    assert loaded == {"steps": 3, "mlp": {"hidden": 8, "layers": [1, 2]}, "shape": (1, 8, 8)}
    assert type(loaded) is dict and type(loaded["mlp"]) is dict
