"""bitshuffle's OpenMP threads: one per call of the codec, and nothing set for the process.

The framings themselves (the walk, bombs, corrupt size fields) are checked through the
decoder in test_dectris.py and test_decoder_limits.py. Each case runs in a child process:
OpenMP reads OMP_NUM_THREADS once, when bitshuffle's runtime is loaded.
"""

import json
import os
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent("""
    import json, os
    import numpy as np
    from threadpoolctl import ThreadpoolController
    from sxdm_stream.sources.dectris import codec, lz4_framing   # the codec, as the receiver loads it

    def openmp_threads():
        runtimes = ThreadpoolController().select(user_api="openmp").lib_controllers
        return [runtime.get_num_threads() for runtime in runtimes]

    def spy(real):
        def call(*args, **kwargs):
            during.append(openmp_threads())
            return real(*args, **kwargs)
        return call

    environment, before, during = os.environ.get("OMP_NUM_THREADS"), openmp_threads(), []
    lz4_framing.bitshuffle.compress_lz4 = spy(lz4_framing.bitshuffle.compress_lz4)
    lz4_framing.bitshuffle.decompress_lz4 = spy(lz4_framing.bitshuffle.decompress_lz4)
    data = np.arange(516 * 516, dtype=np.uint32)
    payload = lz4_framing.compress_bslz4(data)
    assert np.array_equal(lz4_framing.decompress_bslz4(payload, data.nbytes, 4,
                                                       backend="bitshuffle"), data)
    print(json.dumps({"environment": environment, "before": before, "during": during,
                      "after": openmp_threads()}))
""")


def probe(omp_num_threads):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if omp_num_threads is not None:
        env["OMP_NUM_THREADS"] = omp_num_threads
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_bitshuffle_runs_on_one_openmp_thread_and_the_process_is_left_alone():
    seen = probe(None)
    assert seen["environment"] is None                 # importing the codec set nothing
    assert seen["before"], "bitshuffle's OpenMP runtime was not found"
    assert seen["during"] == [[1] * len(seen["before"])] * 2
    assert seen["after"] == seen["before"]             # restored for the calling thread


def test_a_user_who_exports_omp_num_threads_keeps_their_value():
    seen = probe("3")
    assert seen["during"] == [[3] * len(seen["before"])] * 2
