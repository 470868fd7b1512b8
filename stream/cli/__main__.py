"""``python -m sxdm_stream.cli``: the same as the ``sxdm-stream`` command."""

import sys

from .main import main

sys.exit(main())
