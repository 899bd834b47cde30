import os
import sys

# `python -m repocomplete` puts the working directory first on sys.path. The server runs in the user's repository,
# where a file named like a standard module (textwrap.py, logging.py) would then shadow it; the installed console
# script does not look there, and neither do we.
if sys.path and sys.path[0] in ("", os.getcwd()):
    sys.path.pop(0)

from repocomplete.cli import main  # noqa: E402

sys.exit(main())
