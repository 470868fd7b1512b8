"""The one configuration tree, loaded from TOML and validated when loaded.

:class:`Config` holds one frozen dataclass per TOML table, and every setting has one name, the
same in a file and in Python: ``[live] policy`` is ``config.live.policy``. The live processor,
the direct file processing and the demo all take a ``Config``
(``LiveProcessor(endpoint, settings=config)``); :attr:`Config.analysis` gathers the sections
:func:`sxdm_stream.analysis.analyse` reads. Command-line flags override keys
(:func:`override`, used by :func:`sxdm_stream.cli.args.config_from_args`).

Loading checks everything before anything runs: an unknown key, a value of the wrong type or
out of its range raises :class:`ConfigError` naming the key (``live.policy``) and what is
allowed.

**Format version.** The top-level key ``version`` is the format of the file: this sxdm-stream
reads format :data:`CONFIG_VERSION` (1). A file without it is read as format 1 (every file
written before the key existed is one). A file for a newer format, or for a number that was
never a format, is refused with an error that says which format this sxdm-stream reads. An
old spelling a user's file may hold still reads, with a :class:`ConfigDeprecationWarning`
naming the new one: ``maps.d_ref_a = 0`` for "the mean d" (leave the key out). Names that
only ever existed in Python (``queue_size``, ``d_ref``, ``snapshot_hz``...) are errors naming
the key to write instead.

Every key, with its unit and default (docs/configuration.md says the same at more length)::

    version = 1                      # configuration format

    [simulation]                     # the built-in simulated experiment (demo, simulate)
    detector = "maxipix_2x2"         # or "eiger2_500k"
    shape = [40, 40]                 # map rows, cols (map pixels)
    step_um = 0.1                    # map step, micrometres
    n_angles = 31                    # rocking angles
    rocking_half_range_deg = 0.3     # rocking curve from -this to +this, degrees
    counts = 2e5                     # integrated counts at the particle's thickest point
    background_rate = 2e-5           # counts per detector pixel per frame
    drift_um_per_angle = [0.0, 0.0]  # sample drift (row, col), micrometres per rocking angle
    seed = 0                         # random seed

    [accumulation]                   # how frames are added (sxdm_stream.core.accumulate)
    threshold = 0                    # detector counts below are ignored
    histogram_bins = "auto"          # q histogram bins [bx, by, bz]; [0, 0, 0]: moments only
    histogram_max_bins = 32          # "auto": at most this many bins per axis
    # histogram_bounds = [[qx, qy, qz], [qx, qy, qz]]  # first and last bin centres, 1/Angstrom
                                     # (default: the q range the scan covers)
    histogram_dtype = "float32"      # or "float64"
    histogram_budget_mib = 2048      # memory for the histograms of the whole map, MiB
    # q_ref = [qx, qy, qz]           # 1/Angstrom, subtracted before summing moments
                                     # (default: the centre of the q range covered)
    pixel_mask = ""                  # detector pixels to exclude besides the detector's own:
                                     # .npy, EDF or "FILE.h5:/dataset", non-zero = excluded;
                                     # relative to this file (process --mask overrides it)
    # max_valid_counts = 1e6         # counts above are invalid: left out and counted (counts
                                     # of 2**bits - 1 always are; the detector's own limit too)
    q_shells = 0                     # equal |Q| slices with exact moments per map pixel, for
                                     # [phases] (0: off; 64 for operando phase transitions)

    [[accumulation.q_rois]]          # q-space ROIs (none by default), each with its own maps
    name = "peak0"                   # (`sxdm-stream rois RESULTS.h5` prints suggestions)
    lo = [-0.005, -0.006, 1.3264]    # 1/Angstrom, sample frame
    hi = [0.005, 0.007, 1.3311]
    shape = "box"                    # or "ellipsoid" (inscribed in the box)

    [maps]                           # maps from the moments (sxdm_stream.core.maps)
    mask_fraction = 0.2              # mask: map pixels reaching this fraction of the maximum
                                     # intensity (0 to 1)
    # d_ref_a = 4.7333               # strain reference d-spacing, Angstrom
                                     # (default: the mean d over the mask)

    [drift]                          # sample drift between rocking angles (analysis.drift)
    mode = "off"                     # "off", "auto" (from the per-angle intensity maps), "given"
    reference_angle = -1             # index; -1: the angle with the most intensity
    shifts_um = []                   # mode "given": [[row, col], ...] micrometres, one per angle
    min_intensity_fraction = 0.05    # weaker angles (fraction of the strongest) are interpolated
    min_correlation = 0.5            # angles matching their template less are interpolated
    outline_fraction = 0.003         # outline registered: fraction of each angle's maximum
    smoothing_angles = 5             # local straight-line fit over this many angles; 1 = none
    drop_incomplete = true           # empty map pixels whose data would come from outside

    [particles]                      # per-particle table (sxdm_stream.analysis.particles)
    min_pixels = 10                  # smallest particle, map pixels
    connectivity = 1                 # 1: pixels sharing an edge; 2: corners too
    domain_misorientation_deg = 0.01 # neighbours differing more are in different sub-domains
    min_domain_pixels = 5            # smallest sub-domain, map pixels

    [fits]                           # Gaussian fits of each masked pixel's q projections
    enabled = false                  # at the end of each scan (~1 s per 10,000 map pixels)

    [roi_suggestion]                 # q-ROIs suggested from the summed q histogram
    enabled = true                   # at the end of each scan

    [phases]                         # phases along |Q| (analysis.phases; needs q_shells > 0)
    enabled = true                   # per-phase d and fraction maps, mixed pixels, per particle
    max_phases = 3                   # at most this many phases
    min_fraction = 0.03              # a phase holds at least this fraction of the counts (of
                                     # the masked map; of a pixel or particle for its d there)
    mixed_fraction = 0.1             # mixed pixel: two phases each hold this fraction of it
    min_separation = 3               # peaks closer than this many |Q| slices are one phase
    min_spacing = 0.01               # peaks whose d differ less (relative) are one phase
    prominence = 0.05                # a peak rises this fraction of the highest above its
                                     # surroundings (of the smoothed |Q| profile)
    smoothing = 1.0                  # Gaussian smoothing of the profile, sigma in slices
    tail_fraction = 0.002            # a phase's slices end where the profile falls to this
                                     # fraction of its peak above the background
    continuity_tolerance = 0.01      # relative d change up to which a phase keeps its id
                                     # from the previous scan of a series

    [tracking]                       # particles followed through an operando series
    outline_fraction = 0.5           # registered outline: map clipped at this fraction of its
                                     # maximum intensity (0 to 1)
    outline_blur_px = 1.0            # ... and blurred by this sigma, map pixels
    reference_weight = 0.3           # weight of each new map in the running reference (0 to 1)
    reference_margin_px = 16         # reference canvas margin beyond the first map, map pixels
    min_correlation = 0.3            # a weaker match is a failed registration
    max_shift_px = 8.0               # a bigger jump between two maps too (map pixels)
    min_overlap_fraction = 0.2       # overlap (of the smaller region) linking two particles
    ambiguous_overlap_ratio = 0.8    # overlaps this close are decided by d and tilt
    d_scale_a = 0.001                # d difference weighing like ...
    tilt_scale_deg = 0.02            # ... this tilt difference in the tie-break
    memory_scans = 3                 # a lost particle keeps its id this many maps
    return_distance_um = 0.5         # ... if it comes back this close (sample frame)

    [alarms]                         # operando alarms, per map (analysis.alarms)
    # d_change_a_per_scan = 0.005    # a particle's d of a phase changing more in one map, A
    fraction_crossings = [0.5]       # a particle's phase fraction crossing one of these
    # lag_fraction = 0.3             # a particle's phase fraction this far from the median
    particle_disappears = true       # a particle the tracker loses
    particle_appears = false         # a new particle
    # drift_um_per_scan = 0.5        # the sample moving more between two maps, micrometres

    [live]                           # how the live processor runs (sxdm_stream.runtime)
    policy = "block"                 # frame queue full: "block" the detector or "drop" images
    frame_queue_messages = 256       # messages waiting for the worker, at most
    frame_queue_mib = 512            # decoded images waiting for the worker, MiB
    writer_queue_jobs = 4            # results writes waiting for the writer, at most
    writer_queue_mib = 4096          # copied sums waiting for the writer, MiB
    hold_frames = 512                # frames waiting for positions from the control system
    join_timeout_s = 10              # seconds an ended series waits for its run's positions
    snapshot_max_hz = 10             # snapshots per second, at most
    checkpoints = true               # a checkpoint at each rocking angle (process --resume)
    keep_results = 16                # finished series kept in memory, at most
    decode_threads = 1               # threads decompressing images (0: one per core, <= 4)

    [output]
    directory = "results"            # where the demo writes its results

Where things are: the sections and what each key allows in :mod:`sxdm_stream.config.tree`,
reading and checking a file in :mod:`sxdm_stream.config.load`, the scan file of
``process --scan-file`` in :mod:`sxdm_stream.config.scan_file`.
"""

from sxdm_stream.analysis.drift import DriftSettings
from sxdm_stream.analysis.particles import ParticleSettings
from sxdm_stream.analysis.phases import PhaseSettings
from sxdm_stream.analysis.scan_analysis import (AnalysisSettings, FitSettings, MapSettings,
                                                RoiSuggestionSettings)
from sxdm_stream.config.load import (CONFIG_VERSION, ConfigDeprecationWarning, check_version,
                                     config_from_dict, load_config, override)
from sxdm_stream.config.scan_file import load_scan_file
from sxdm_stream.config.tree import (POLICIES, Config, LiveSettings, OutputSettings,
                                     SimulationSettings)
from sxdm_stream.core.accumulate import AccumulationSettings

__all__ = [
    "CONFIG_VERSION", "POLICIES", "AccumulationSettings", "AnalysisSettings", "Config",
    "ConfigDeprecationWarning", "DriftSettings", "FitSettings", "LiveSettings", "MapSettings",
    "OutputSettings", "ParticleSettings", "PhaseSettings", "RoiSuggestionSettings",
    "SimulationSettings",
    "check_version", "config_from_dict", "load_config", "load_scan_file", "override",
]
