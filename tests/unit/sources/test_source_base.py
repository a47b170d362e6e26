import pytest

from streamcap.sources.base import Source, can_transition
from streamcap.core.types import Frame, Status, StreamState

S = StreamState


class _Probe(Source):
    """A source with nothing behind it: only the shared status bookkeeping is exercised."""

    async def recv(self) -> Frame:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


def _probe() -> tuple[_Probe, list[Status]]:
    seen: list[Status] = []
    return _Probe("cam1", live=True, on_status=seen.append), seen


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (None, S.STARTING),
        (S.STARTING, S.LIVE),
        (S.LIVE, S.STALLED),
        (S.STALLED, S.RECONNECTING),
        (S.RECONNECTING, S.LIVE),
        (S.LIVE, S.RECONNECTING),
        (S.LIVE, S.ENDED),
        (S.RECONNECTING, S.ERROR),
    ],
)
def test_allowed_transitions(old, new):
    assert can_transition(old, new)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (None, S.LIVE),
        (S.RECONNECTING, S.STALLED),
        (S.STARTING, S.STALLED),
        (S.ENDED, S.LIVE),
        (S.ERROR, S.RECONNECTING),
        (S.ENDED, S.ERROR),
    ],
)
def test_refused_transitions(old, new):
    assert not can_transition(old, new)


def test_status_hook_receives_each_change_with_stream_id_and_code():
    source, seen = _probe()
    assert source._set_state(S.STARTING, "opening")
    assert source._set_state(S.RECONNECTING, "refused", code="source_error", retry_in_s=0.1)
    assert [(s.stream, s.state, s.detail) for s in seen] == [
        ("cam1", S.STARTING, "opening"), ("cam1", S.RECONNECTING, "refused")]
    assert seen[1].code == "source_error"
    assert seen[1].extra == {"retry_in_s": 0.1}
    assert source.state is S.RECONNECTING


def test_repeating_the_current_state_emits_nothing():
    source, seen = _probe()
    source._set_state(S.STARTING)
    source._set_state(S.RECONNECTING, "refused")
    assert not source._set_state(S.RECONNECTING, "refused again")
    assert len(seen) == 2


def test_terminal_state_refuses_later_changes():
    source, seen = _probe()
    source._set_state(S.STARTING)
    source._set_state(S.ERROR, "cannot open")
    assert not source._set_state(S.LIVE)
    assert source.state is S.ERROR
    assert [s.state for s in seen] == [S.STARTING, S.ERROR]


def test_drop_and_reconnect_hooks_are_optional_and_forwarded():
    drops: list[str] = []
    reconnects: list[None] = []
    quiet = _Probe("a", live=True)
    quiet._drop("handoff_full")
    quiet._reconnecting()
    loud = _Probe("b", live=True, on_drop=drops.append,
                  on_reconnect=lambda: reconnects.append(None))
    loud._drop("handoff_full")
    loud._reconnecting()
    assert drops == ["handoff_full"] and len(reconnects) == 1


def test_transform_defaults_to_identity():
    import numpy as np

    image = np.zeros((2, 2, 3), np.uint8)
    assert _Probe("a", live=False)._transform(image) is image
    first_row = _Probe("a", live=False, frame_transform=lambda x: x[:1])
    assert first_row._transform(image).shape == (1, 2, 3)
