import sys

from distml.cli import main

sys.exit(main())
