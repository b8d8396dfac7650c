import sys

from mocobench.cli import main

sys.exit(main())
