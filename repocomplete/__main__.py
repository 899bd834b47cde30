import sys

from repocomplete.cli import main

sys.exit(main())
