import sys

from osad.cli import main

sys.exit(main())
