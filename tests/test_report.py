"""Report details that are easy to get wrong silently."""
from __future__ import annotations

from mtlrepro.report import _speed_options
from mtlrepro.store import RunRecord


def _rec(rid: str, **recipe) -> RunRecord:
    return RunRecord(recipe_id=rid, fingerprint="f", seed=0, profile="tiny", status="finished",
                     recipe=recipe, data={})


def test_speed_options_are_reported_when_used():
    plain = [_rec("t/a", amp=False, channels_last=False), _rec("t/b")]
    assert "amp and channels_last off" in _speed_options(plain)
    mixed = plain + [_rec("t/c", amp=True), _rec("t/d", amp=True, channels_last=True), _rec("t/e", amp=True)]
    text = _speed_options(mixed)
    assert "**bf16 autocast** in `t/c`, `t/e`" in text
    assert "**bf16 autocast, channels-last** in `t/d`" in text
    assert "t/a" not in text and "off" not in text
