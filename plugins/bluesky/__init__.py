"""sxdm-stream inside bluesky: plans, simulated ophyd devices and a callback.

* :func:`~.plans.sxdm_map`, :func:`~.plans.sxdm_map_until_peak`,
  :func:`~.plans.sxdm_operando_maps`: plans (generators);
* :class:`~.callback.SxdmCallback`: ``RE.subscribe(SxdmCallback(live_processor))``;
* :func:`~.remote.listen`: the same from a RunEngine's 0MQ proxy (msgpack by default);
* :func:`~.devices.sim_sxdm_devices`, :class:`~.devices.SimulatedSxdmDetector`,
  :class:`~.feedback.LiveFeedback`: ophyd devices.

Needs the optional dependencies ``bluesky``, ``ophyd``, ``event-model`` and ``msgpack``
(``pip install sxdm-stream[bluesky]``). Documents use msgpack-numpy's wire format, read by our
own safe decoder (:mod:`.codec`): msgpack-numpy's decoder unpickles object arrays.
"""

from .callback import SxdmCallback
from .devices import (SimulatedAxis, SimulatedSxdmDetector, StreamingSxdmDetector,
                      sim_sxdm_devices)
from .feedback import LiveFeedback, summarize_maps, summarize_record
from .metadata import scan_from_start, sxdm_block
from .plans import sxdm_map, sxdm_map_until_peak, sxdm_operando_maps, widen_rocking_range
from .remote import RemoteListener, listen

__all__ = ["SxdmCallback", "SimulatedAxis", "SimulatedSxdmDetector", "StreamingSxdmDetector", "sim_sxdm_devices",
           "LiveFeedback", "summarize_maps", "summarize_record", "scan_from_start", "sxdm_block",
           "sxdm_map", "sxdm_map_until_peak", "sxdm_operando_maps", "widen_rocking_range", "RemoteListener", "listen"]
