import sys

from layertrim.cli import main

sys.exit(main())
