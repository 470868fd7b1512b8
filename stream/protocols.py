"""The contracts between the stages that plug into the live processor, as ``typing.Protocol``.

Anything with these methods plugs in; nothing inherits from a base class to be accepted (the
model is bluesky's ``protocols.py``).

* a :class:`Source` brings messages from outside (a detector stream, a control system's
  documents) and hands each one to a :class:`MessageSink`, usually
  :meth:`sxdm_stream.runtime.processor.LiveProcessor.submit`;
* a :class:`ResultSink` takes each finished series (the runtime's ``SeriesResult``: maps,
  analysis, results path, complete or not), e.g. the bluesky plugin's ``DerivedRunPublisher``,
  registered with ``LiveProcessor.on_result``.

Where a new source, sink or analysis goes: ``docs/architecture.md``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from sxdm_stream.messages import PlanMessage, StreamMessage

__all__ = ["MessageSink", "ResultSink", "Source"]


@runtime_checkable
class MessageSink(Protocol):
    """Takes the decoded messages of a source (stream messages and the control system's plan
    messages, :mod:`sxdm_stream.messages`)."""

    def submit(self, message: StreamMessage | PlanMessage) -> None:
        """Hand one message over, from any thread; may block to apply back-pressure.
        Raises TypeError for an object that is not a message."""


@runtime_checkable
class Source(Protocol):
    """Receives from outside and hands every message to the :class:`MessageSink` it was
    built with.

    :meth:`run` is called once, on a thread the caller owns, and returns after :meth:`stop`
    (called from any other thread) within a fraction of a second. A message it cannot use
    is counted under a reason and never ends :meth:`run`.
    """

    def run(self) -> None:
        """Receive and hand over messages until stopped."""

    def stop(self) -> None:
        """Ask :meth:`run` to return; safe from any thread, before or after ``run`` starts."""


@runtime_checkable
class ResultSink(Protocol):
    """Called with every finished series, on the processor's writer thread: keep it short.
    An exception it raises is logged and counted, never stops the processor."""

    def __call__(self, result: Any) -> None:
        """Take one series' result (``sxdm_stream.runtime.writer.SeriesResult``)."""
