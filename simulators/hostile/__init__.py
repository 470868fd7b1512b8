"""Hostile inputs for fuzzing the processor: what a hostile network can send it.

Hostile messages are made from valid ones, broken by one *family* of mutation each (issue 11).
Modules, one concern each:

* :mod:`.values` -- the :class:`Hostile` record (its parts, its family, what was done),
  decompression bombs made by hand, paths into decoded messages, hostile values and splices;
* :mod:`.families` -- the :class:`Corpus` of valid v1 and v2 messages of one series and the
  mutation families (flip, truncate, parts, field, array, bomb, nesting, junk);
* :mod:`.live` -- for a processor that is running a series: attacks on that very series
  (:func:`hostile_during`), pixel requests a viewer would never send
  (:func:`hostile_pixel_request`), and :class:`LiveFeed`, which sends them over its sockets and
  stops waiting as soon as one of the processor's threads died.

Every mutation draws from a :class:`random.Random` handed in: ``tests/sources/test_fuzz.py`` gets one
from hypothesis, which shrinks a failure to its smallest description (each :class:`Hostile`
says what was done), ``benchmarks/bench_fuzz.py`` a seeded one for long runs. Import the names
below from here (``from sxdm_stream.simulators.hostile import Corpus``).
"""

from .families import Corpus, bomb
from .live import (FeedStalled, LiveFeed, answered_well, element_size_v1, element_size_v2,
                   hostile_during, hostile_pixel_request)
from .values import CHANNEL, DEEP, Hostile, lz4_zeros

__all__ = ["CHANNEL", "DEEP", "Corpus", "FeedStalled", "Hostile", "LiveFeed", "answered_well",
           "bomb", "element_size_v1", "element_size_v2", "hostile_during",
           "hostile_pixel_request", "lz4_zeros"]
