"""A complete answer as a stream, and a stream as a complete answer.

``events_of`` lets a non-stream answer (a cached one, or one from a non-stream path) serve a streaming
client; ``StreamAccumulator`` rebuilds the complete answer of a stream (for a client that did not ask for a
stream, and for the cache to store a streamed answer).

``StreamAccumulator(events_of(r))`` gives back ``r``, except that adjacent text parts of a choice come back
as one (a stream does not mark where one text block ends and the next begins) and cache marks are dropped
(a response carries none).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.types import (
    ChatResponse,
    Choice,
    StopReason,
    StreamError,
    StreamEvent,
    StreamStart,
    StreamStop,
    TextDelta,
    TextPart,
    ToolCallDelta,
    ToolCallPart,
    ToolCallStart,
    Usage,
    UsageReport,
)


def events_of(resp: ChatResponse) -> list[StreamEvent]:
    """``resp`` as the events of a stream: ``StreamStart``; per choice its text, refusal and tool calls
    (each call a start and one argument delta) and its ``StreamStop``; then one ``UsageReport``."""
    events: list[StreamEvent] = [StreamStart(resp.id, resp.model, resp.created)]
    for index, choice in enumerate(resp.choices):
        call = 0
        for part in choice.content:
            if isinstance(part, TextPart):
                if part.text:
                    events.append(TextDelta(part.text, index))
            else:
                events.append(ToolCallStart(part.id, part.name, call, index))
                if part.arguments:
                    events.append(ToolCallDelta(part.arguments, call, index))
                call += 1
        if choice.refusal is not None:
            events.append(TextDelta(choice.refusal, index, refusal=True))
        events.append(StreamStop(choice.stop_reason, choice.stop_sequence, index))
    events.append(UsageReport(resp.usage))
    return events


@dataclass(slots=True)
class _Call:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _ChoiceState:
    parts: list[list[str] | _Call] = field(default_factory=list)  # text pieces or a tool call, in order
    calls: dict[int, _Call] = field(default_factory=dict)
    refusal: list[str] | None = None
    stopped: bool = False
    reason: StopReason | None = None
    stop_sequence: str | None = None


class StreamAccumulator:
    """Collects the events of one stream into the complete answer. ``add`` mutates the accumulator;
    ``response`` does not.

    Usage is the last ``UsageReport`` (reports are cumulative), else the ``StreamStart`` usage, else zero.
    A stream that ended in ``StreamError`` keeps the error in ``error``: its response is partial."""

    __slots__ = ("_choices", "_created", "_id", "_model", "_usage", "error")

    def __init__(self) -> None:
        self._id = ""
        self._model = ""
        self._created = 0
        self._usage: Usage | None = None
        self._choices: dict[int, _ChoiceState] = {}
        self.error: StreamError | None = None

    def _choice(self, index: int) -> _ChoiceState:
        state = self._choices.get(index)
        if state is None:
            state = self._choices[index] = _ChoiceState()
        return state

    def add(self, event: StreamEvent) -> None:
        if isinstance(event, TextDelta):
            state = self._choice(event.index)
            if event.refusal:
                state.refusal = [*(state.refusal or []), event.text]
            elif state.parts and isinstance(state.parts[-1], list):
                state.parts[-1].append(event.text)
            else:
                state.parts.append([event.text])
        elif isinstance(event, ToolCallDelta):
            call = self._choice(event.index).calls.get(event.call)
            if call is not None:
                call.arguments.append(event.arguments)
        elif isinstance(event, ToolCallStart):
            state = self._choice(event.index)
            state.calls[event.call] = new = _Call(event.id, event.name)
            state.parts.append(new)
        elif isinstance(event, StreamStop):
            state = self._choice(event.index)
            state.stopped, state.reason, state.stop_sequence = True, event.reason, event.stop_sequence
        elif isinstance(event, UsageReport):
            self._usage = event.usage
        elif isinstance(event, StreamStart):
            self._id, self._model, self._created = event.id, event.model, event.created
            if event.usage is not None and self._usage is None:
                self._usage = event.usage
        else:
            self.error = event

    @property
    def complete(self) -> bool:
        """Every choice seen has stopped and no error came."""
        return self.error is None and bool(self._choices) and all(c.stopped for c in self._choices.values())

    def response(self) -> ChatResponse:
        """The answer so far as a ``ChatResponse`` (choices in index order)."""
        choices = []
        for index in sorted(self._choices):
            state = self._choices[index]
            content: list[TextPart | ToolCallPart] = [
                TextPart("".join(p))
                if isinstance(p, list)
                else ToolCallPart(p.id, p.name, "".join(p.arguments))
                for p in state.parts
            ]
            refusal = "".join(state.refusal) if state.refusal is not None else None
            choices.append(Choice(tuple(content), state.reason, state.stop_sequence, refusal))
        return ChatResponse(self._id, self._model, tuple(choices), self._usage or Usage(), self._created)
