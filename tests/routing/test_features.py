"""Request features, sticky tiers and the classifier's plumbing, over plain data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gateway.types import ChatRequest, ImagePart, Message, ResponseFormat, TextPart, Tool, ToolCallPart
from routing.classifier import SIGNALS, ComplexityClassifier, bundled_path, signals
from routing.features import features_of
from routing.sticky import StickyTiers


def user(text: str) -> Message:
    return Message("user", (TextPart(text),))


def test_features_estimate_size_and_needs() -> None:
    req = ChatRequest(
        model="m",
        system=(TextPart("be brief"),),
        messages=(user("x" * 3000), Message("assistant", (TextPart("ok"),)), user("and now?")),
        max_tokens=100,
    )
    f = features_of(req)
    assert f.input_tokens >= 1000 and f.max_tokens == 100 and f.turns == 3
    assert not (f.tools or f.images or f.json_output)
    assert f.text == "and now?"
    # the conversation fingerprint is the same on every turn of one conversation, and differs for another
    later = ChatRequest(model="m", system=(TextPart("be brief"),), messages=(*req.messages, user("more")))
    other = ChatRequest(model="m", system=(TextPart("be brief"),), messages=(user("y"),))
    assert features_of(later).conversation == f.conversation != features_of(other).conversation


def test_features_see_tools_images_and_json() -> None:
    img = ChatRequest(model="m", messages=(Message("user", (ImagePart(url="http://x/i.png"),)),))
    assert features_of(img).images and features_of(img).input_tokens > 1000
    tools = ChatRequest(model="m", messages=(user("hi"),), tools=(Tool("f", parameters={"type": "object"}),))
    assert features_of(tools).tools
    called = ChatRequest(model="m", messages=(Message("assistant", (ToolCallPart("1", "f", "{}"),)),))
    assert features_of(called).tools
    fmt = ChatRequest(model="m", messages=(user("hi"),), response_format=ResponseFormat("json_object"))
    assert features_of(fmt).json_output


def test_sticky_tiers_keep_the_highest_tier_bounded_and_expiring() -> None:
    now = [0.0]
    sticky = StickyTiers(max_entries=2, ttl_s=10, clock=lambda: now[0])
    sticky.reach("a", 3)
    sticky.reach("a", 1)
    assert sticky.get("a") == 3
    sticky.reach("b", 1)
    sticky.reach("c", 1)  # evicts the least recently used ("a")
    assert sticky.get("a") is None and len(sticky) == 2
    now[0] = 10.0
    assert sticky.get("b") is None


def test_signals_and_threshold_calibration(tmp_path: Path) -> None:
    mc = "Which is right?\nA. one\nB. two\nC. three\nD. four\nAnswer:"
    sig = signals(mc)
    assert sig.shape == (len(SIGNALS),) and sig[SIGNALS.index("multiple_choice")] == 1.0
    d = 8 + len(SIGNALS)
    rng = np.random.default_rng(0)
    clf = ComplexityClassifier(
        w1=rng.standard_normal((d, 4)).astype(np.float32),
        b1=np.zeros(4, np.float32),
        w2=np.ones(4, np.float32),
        b2=0.0,
        signal_mean=np.zeros(len(SIGNALS), np.float32),
        signal_std=np.ones(len(SIGNALS), np.float32),
        quantiles=np.linspace(-1, 1, 101).astype(np.float32),
        meta={"k": 1},
    )
    assert clf.dim == 8
    assert clf.threshold(0.0) == math.inf and clf.threshold(1.0) == 0.0
    assert clf.threshold(0.5) == 0.0 and clf.threshold(0.25) > clf.threshold(0.75)
    v = rng.standard_normal(8).astype(np.float32)
    assert clf.score(v, mc) == clf.score(v, mc)
    clf.save(tmp_path / "c.npz")
    back = ComplexityClassifier.load(tmp_path / "c.npz")
    assert back.meta == {"k": 1} and abs(back.score(v, mc) - clf.score(v, mc)) < 1e-2


def test_the_shipped_classifier_loads_and_its_calibration_is_monotone() -> None:
    clf = ComplexityClassifier.load(bundled_path())
    assert clf.dim == 384 and clf.meta["rows"] > 5000
    assert np.all(np.diff(clf.quantiles) >= 0)
    assert bundled_path().stat().st_size < 400_000
