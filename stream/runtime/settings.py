"""The scan set-up of each series the live processor receives.

:func:`setup_for_series` decides which scan and geometry a series is accumulated with (the
user's override, the series' own description, or the description of the control-system run
it is joined to). How the processor runs is the configuration's ``[live]`` section,
:class:`sxdm_stream.config.LiveSettings`, which the processor reads from the
:class:`sxdm_stream.config.Config` it is given (imported here too, where it used to live).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from sxdm_stream.config import Config, LiveSettings
from sxdm_stream.core.accumulate import AccumulationSettings, ScanSetup
from sxdm_stream.core.geometry import Geometry, geometry_from_description
from sxdm_stream.core.scan import ScanDescription
from sxdm_stream.errors import BadMessageError, ConfigError
from sxdm_stream.messages import SeriesStart
from sxdm_stream.pipeline.join import describes_scan
from sxdm_stream.sources.files.masks import combine_masks, read_mask

log = logging.getLogger(__name__)

__all__ = ["Config", "LiveSettings", "ScanOverride", "setup_for_series"]


@dataclass(frozen=True)
class ScanOverride:
    """Scan and geometry given by the user (``--scan-file``) for detectors that send none."""

    scan: ScanDescription
    geometry: Geometry


def setup_for_series(start: SeriesStart, settings: AccumulationSettings,
                     override: ScanOverride | None, plan_block=None) -> ScanSetup:
    """The scan set-up of a series: from ``override`` if given, else from the start message's
    sxdm block, else from the joined run's block (``plan_block``).

    The pixel mask is the OR of the detector's (the start's ``pixel_mask``), the scan file's
    and the user's (``settings.pixel_mask``), reported once in the log; counts above the
    detector's announced ``max_valid_counts`` are invalid unless the user set a lower limit.
    A detector that announces another number of images than the scan has frames is refused:
    frames joined by index to the wrong map pixels would make a sheared map.
    """
    if override is not None:
        geometry, scan = override.geometry, override.scan
        scan_file_mask = geometry.detector.mask
    else:
        block = start.sxdm if describes_scan(start.sxdm) else plan_block
        if not describes_scan(block):
            raise BadMessageError(
                f"series {start.series_id} carries no scan description (user_data 'sxdm' block) "
                "and none was given with --scan-file", "no_scan_description")
        scan = ScanDescription.from_description(block["scan"])
        geometry, scan_file_mask = geometry_from_description(block["geometry"]), None
    if start.image_shape is not None and tuple(start.image_shape) != tuple(geometry.detector.shape):
        raise BadMessageError(f"the detector sends {start.image_shape} images, the geometry "
                              f"expects {geometry.detector.shape}", "size_mismatch")
    if start.number_of_images not in (None, scan.n_frames):
        raise BadMessageError(
            f"series {start.series_id}: the detector announces {start.number_of_images} images "
            f"but the scan ({scan.shape[0]}x{scan.shape[1]} map, {scan.n_angles} rocking angles, "
            f"{scan.frames_per_point} frame(s) per point) has {scan.n_frames}: refused (check "
            "the scan description or --scan-file)", "frame_count_mismatch")
    try:
        masks = combine_masks(geometry.detector.shape, {
            "the detector": start.pixel_mask, "the scan file": scan_file_mask,
            settings.pixel_mask: read_mask(settings.pixel_mask) if settings.pixel_mask else None})
    except ConfigError as exc:
        raise BadMessageError(f"series {start.series_id}: {exc}", "size_mismatch") from None
    geometry = Geometry(replace(geometry.detector, mask=masks.mask), geometry.energy_ev,
                        geometry.diffractometer)
    limit = start.max_valid_counts
    if limit is not None and (settings.max_valid_counts is None or limit < settings.max_valid_counts):
        settings = replace(settings, max_valid_counts=float(limit))
    log.info("series %s: %s; %s are invalid (left out and counted)", start.series_id,
             masks.summary(), "counts of 2**bits - 1" if settings.max_valid_counts is None
             else f"counts above {settings.max_valid_counts:g} or of 2**bits - 1")
    return ScanSetup(geometry, scan, settings)
