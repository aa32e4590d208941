"""``python -m sentinel_daemon.worker``: one worker process (what the supervisor starts).

The daemon recognises its predecessor's orphaned workers by this module name in their
command line, so it stays the entry point.
"""

import sys

from sentinel_daemon.worker.loop import main

sys.exit(main())
