import sys

from fastembed_tune.cli import main

sys.exit(main())
