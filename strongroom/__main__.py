import sys

from strongroom.cli import main

sys.exit(main())
