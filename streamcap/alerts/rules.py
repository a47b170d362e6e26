"""Alert rules on captions and on scene objects, and their lifecycle: pure, replayable on media time.

A :class:`Rule` matches a caption text by whole keywords, phrases, a regular expression or —
through a ``similarity`` callable the caller supplies (the offline text embedder) — by meaning,
against a natural-language description. Matching is on words, never substrings: the keyword
``yes`` does not match "eyes". A rule may instead (or as well) look at the objects a scene
describer counted in each window: an :class:`~streamcap.alerts.objects.ObjectCondition` (label,
count, motion, zone).

Every rule's alerts on a stream follow one state machine, :class:`AlertLifecycle`, fed by one of
two trackers:

- :class:`AlertTracker` (text matchers): the stream's **current final caption** after every
  captioned window (:meth:`AlertTracker.observe`: the final's seq, text and span, which grows while
  windows keep agreeing with it); a matching run starts at the final's ``start_s``;
- :class:`ObjectTracker` (an object condition): every captioned video window's objects at the
  window's end ``at_s`` (:meth:`ObjectTracker.observe_objects`); a matching run starts at the first
  matching window's ``at_s``.

A rule with both text matchers and an object condition has both trackers, independent of each
other: either feed matching raises an alert, each with its own id and lifecycle (so such a rule
may have two alerts open at once, one from the captions, one from the objects; the object one's
``detail`` says what matched, a caption one's is empty). The lifecycle emits
:class:`~streamcap.core.types.Alert` events:

- ``start`` once matches have covered ``min_duration_s`` of media time without a break (an event
  shorter than that never fires) — and not within ``cooldown_s`` after the previous alert of the
  same rule and tracker on this stream ended;
- ``update`` while the alert is active, when a different final (a new ``seq``) still matches, or
  when the number of matching objects changes (not at every window);
- ``end`` when the feed has stopped matching for ``end_after_s`` of media time (0: at the first
  final or window that does not match), or the stream ends (:meth:`AlertLifecycle.close`).

No clock, no I/O: times are the stream's media seconds, so a file, a live stream and a replay on
simulated time behave alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from streamcap.alerts.objects import ObjectCondition
from streamcap.core.types import Alert, AlertPhase, SceneObject, Severity

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")

Similarity = Callable[[str, str], float]


def words(text: str) -> list[str]:
    """Lowercase word tokens (letters and digits; an apostrophe inside a word is kept)."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Rule:
    """What to look for in final captions and/or scene objects, and how an alert behaves. Any
    matcher may match (the text matchers on the current final, ``objects`` on each window)."""

    name: str
    keywords: tuple[str, ...] = ()  # whole words, any of them
    phrases: tuple[str, ...] = ()  # whole-word sequences, any of them
    regex: str | None = None  # searched case-insensitively
    description: str | None = None  # matched by meaning (needs a similarity callable)
    threshold: float = 0.6  # similarity at or above which the description matches
    streams: frozenset[str] | None = None  # None: every stream
    severity: Severity = Severity.WARNING
    min_duration_s: float = 0.0
    cooldown_s: float = 60.0
    end_after_s: float = 0.0
    objects: ObjectCondition | None = None  # what to look for in each window's scene objects
    _pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)
    _phrase_words: tuple[tuple[str, ...], ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (self.has_text or self.objects is not None):
            raise ValueError(f"rule {self.name!r}: give keywords, phrases, regex, description or objects")
        if self.objects is not None and not isinstance(self.objects, ObjectCondition):
            raise ValueError(f"rule {self.name!r}: objects must be an ObjectCondition")
        for k in self.keywords:
            if words(k) != [k.lower()]:
                raise ValueError(f"rule {self.name!r}: keyword {k!r} must be one word (use phrases for more)")
        phrase_words = tuple(tuple(words(p)) for p in self.phrases)
        if any(not p for p in phrase_words):
            raise ValueError(f"rule {self.name!r}: a phrase has no words")
        object.__setattr__(self, "_phrase_words", phrase_words)
        if self.regex is not None:
            try:
                object.__setattr__(self, "_pattern", re.compile(self.regex, re.IGNORECASE))
            except re.error as exc:
                raise ValueError(f"rule {self.name!r}: bad regex {self.regex!r}: {exc}") from exc
        for name in ("min_duration_s", "cooldown_s", "end_after_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"rule {self.name!r}: {name} must be >= 0")

    @property
    def has_text(self) -> bool:
        """Whether the rule has text matchers (and so watches the finals)."""
        return bool(self.keywords or self.phrases or self.regex or self.description)

    def applies_to(self, stream: str) -> bool:
        return self.streams is None or stream in self.streams

    def matches(self, text: str, similarity: Similarity | None = None) -> bool:
        tokens = words(text)
        if self.keywords and not set(k.lower() for k in self.keywords).isdisjoint(tokens):
            return True
        for phrase in self._phrase_words:
            n = len(phrase)
            if any(tuple(tokens[i:i + n]) == phrase for i in range(len(tokens) - n + 1)):
                return True
        if self._pattern is not None and self._pattern.search(text):
            return True
        if self.description and similarity is not None:
            return similarity(text, self.description) >= self.threshold
        return False


class _State(str, Enum):
    IDLE = "idle"  # not matching
    PENDING = "pending"  # matching, not for long enough yet
    ACTIVE = "active"  # an alert is open
    ENDING = "ending"  # active, but the rule stopped matching (waiting end_after_s)


class AlertLifecycle:
    """The state machine every rule's alerts follow on one stream, whatever they match on: fed
    one verdict at a time by :meth:`_step`; ``make_id()`` names each new alert (the caller's id
    scheme). :class:`AlertTracker` (captions) and :class:`ObjectTracker` (scene objects) feed it."""

    def __init__(self, rule: Rule, stream: str, make_id: Callable[[], str]) -> None:
        self.rule = rule
        self.stream = stream
        self._make_id = make_id
        self._state = _State.IDLE
        self._since_s = 0.0  # start of the matching run (PENDING/ACTIVE) or of the non-match (ENDING)
        self._cooldown_until_s = float("-inf")
        self._alert: Alert | None = None
        self._last_seq: int | None = None  # the newest caption seq fed (the end of a closed alert)

    @property
    def active(self) -> Alert | None:
        return self._alert

    def _step(self, hit: bool, start_s: float, end_s: float, seq: int | None, changed: bool,
              detail: str | None = None) -> list[Alert]:
        """One verdict: ``hit`` whether the rule matches what covers media ``start_s``..``end_s``;
        ``changed`` whether what matches is new (an update while active); ``detail`` what matched
        (None: the alert's stays). Returns the alert events it causes, in order."""
        out: list[Alert] = []
        state = self._state
        if hit:
            if state is _State.IDLE:
                if start_s < self._cooldown_until_s:
                    return []  # in cooldown: this run does not count
                self._state, self._since_s = _State.PENDING, start_s
            elif state is _State.ENDING:
                self._state = _State.ACTIVE  # matching again before it ended: the alert goes on
            if self._state is _State.PENDING and end_s - self._since_s >= self.rule.min_duration_s:
                out.append(self._start(seq, detail))
            elif self._state is _State.ACTIVE and changed:
                out.append(self._emit(AlertPhase.UPDATE, seq, None, detail))
        else:
            if state is _State.PENDING:
                self._state = _State.IDLE  # too short: never fires
            elif state is _State.ACTIVE:
                self._state, self._since_s = _State.ENDING, start_s
            if self._state is _State.ENDING and end_s - self._since_s >= self.rule.end_after_s:
                out.append(self._end(seq, self._since_s))
        if seq is not None:
            self._last_seq = seq
        return out

    def close(self, at_s: float) -> list[Alert]:
        """The stream ended or was removed: an open alert ends at ``at_s``."""
        if self._alert is None:
            self._state = _State.IDLE
            return []
        return [self._end(self._last_seq, at_s)]

    def _start(self, seq: int | None, detail: str | None) -> Alert:
        self._state = _State.ACTIVE
        self._alert = Alert(self._make_id(), self.stream, self.rule.name, AlertPhase.START, self.rule.severity,
                            seq, self._since_s, None, detail or "")
        return self._alert

    def _emit(self, phase: AlertPhase, seq: int | None, end_s: float | None, detail: str | None = None) -> Alert:
        assert self._alert is not None
        self._alert = Alert(self._alert.id, self.stream, self.rule.name, phase, self.rule.severity,
                            seq, self._alert.start_s, end_s, self._alert.detail if detail is None else detail)
        return self._alert

    def _end(self, seq: int | None, end_s: float) -> Alert:
        end_s = max(end_s, self._alert.start_s if self._alert else end_s)
        ended = self._emit(AlertPhase.END, seq, end_s)
        self._alert = None
        self._state = _State.IDLE
        self._cooldown_until_s = end_s + self.rule.cooldown_s
        return ended


class AlertTracker(AlertLifecycle):
    """A rule's text matchers on one stream's current final caption. A rule without text
    matchers ignores the finals."""

    def __init__(self, rule: Rule, stream: str, make_id: Callable[[], str],
                 similarity: Similarity | None = None) -> None:
        super().__init__(rule, stream, make_id)
        self._similarity = similarity
        self._matched: dict[int, bool] = {}  # seq → match (a final's text never changes)

    def _match(self, seq: int, text: str) -> bool:
        hit = self._matched.get(seq)
        if hit is None:
            hit = self.rule.matches(text, self._similarity)
            if len(self._matched) > 64:
                self._matched.clear()
            self._matched[seq] = hit
        return hit

    def observe(self, seq: int | None, text: str, start_s: float, end_s: float) -> list[Alert]:
        """The stream's current final after a window (``seq`` None: no final yet). Returns the
        alert events this causes, in order."""
        if seq is None or not self.rule.has_text:
            return []
        return self._step(self._match(seq, text), start_s, end_s, seq, changed=seq != self._last_seq)


class ObjectTracker(AlertLifecycle):
    """A rule's :class:`~streamcap.alerts.objects.ObjectCondition` on one stream's captioned
    video windows. Updates come when the number of matching objects changes; ``detail`` says
    what matched ("2 person moving left in zone")."""

    def __init__(self, rule: Rule, stream: str, make_id: Callable[[], str]) -> None:
        if rule.objects is None:
            raise ValueError(f"rule {rule.name!r} has no object condition")
        super().__init__(rule, stream, make_id)
        self.condition: ObjectCondition = rule.objects
        self._reported: int | None = None  # the matching count the open alert last reported

    def observe_objects(self, seq: int | None, objects: Sequence[SceneObject], at_s: float) -> list[Alert]:
        """One captioned video window's objects; ``at_s`` its end (the newest frame's media time),
        ``seq`` the stream's newest caption (None: none yet). A matching run starts at the first
        matching window's ``at_s``. Returns the alert events this causes, in order."""
        count = self.condition.count(objects)
        hit = self.condition.fits(count)
        out = self._step(hit, at_s, at_s, seq, changed=count != self._reported,
                         detail=self.condition.describe(count) if hit else None)
        if out:
            self._reported = None if out[-1].phase is AlertPhase.END else count
        return out


class CaptionAlerts:
    """Every rule's tracker for every stream, created on first sight of a stream."""

    def __init__(self, rules: Sequence[Rule], make_id: Callable[[], str],
                 similarity: Similarity | None = None) -> None:
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ValueError(f"alert rule names must be unique: {names}")
        self.rules = tuple(rules)
        self._make_id = make_id
        self._similarity = similarity
        self._trackers: dict[str, list[AlertTracker]] = {}
        self._object_trackers: dict[str, list[ObjectTracker]] = {}

    @property
    def semantic(self) -> bool:
        """Whether some rule matches by meaning (and so needs the embedder)."""
        return any(r.description for r in self.rules)

    def _for(self, stream: str) -> list[AlertTracker]:
        trackers = self._trackers.get(stream)
        if trackers is None:
            trackers = self._trackers[stream] = [
                AlertTracker(r, stream, self._make_id, self._similarity) for r in self.rules
                if r.has_text and r.applies_to(stream)]
        return trackers

    def _objects_for(self, stream: str) -> list[ObjectTracker]:
        trackers = self._object_trackers.get(stream)
        if trackers is None:
            trackers = self._object_trackers[stream] = [
                ObjectTracker(r, stream, self._make_id) for r in self.rules
                if r.objects is not None and r.applies_to(stream)]
        return trackers

    @property
    def watches_objects(self) -> bool:
        """Whether some rule looks at scene objects (so :meth:`observe_objects` is worth calling)."""
        return any(r.objects is not None for r in self.rules)

    def observe(self, stream: str, seq: int | None, text: str, start_s: float, end_s: float) -> list[Alert]:
        """The stream's current final after a captioned window (every rule with text matchers)."""
        return [a for t in self._for(stream) for a in t.observe(seq, text, start_s, end_s)]

    def observe_objects(self, stream: str, seq: int | None, objects: Sequence[SceneObject],
                        at_s: float) -> list[Alert]:
        """After every captioned video window: its objects, its end ``at_s`` (media s, the newest
        frame's time) and the stream's newest caption seq (None: none yet). Every rule with an
        object condition sees it; text-only rules ignore it."""
        return [a for t in self._objects_for(stream) for a in t.observe_objects(seq, objects, at_s)]

    def close(self, stream: str, at_s: float) -> list[Alert]:
        trackers: list[AlertLifecycle] = [*self._trackers.pop(stream, []), *self._object_trackers.pop(stream, [])]
        return [a for t in trackers for a in t.close(at_s)]
