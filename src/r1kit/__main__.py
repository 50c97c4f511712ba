import sys

from r1kit.cli.main import main

sys.exit(main())
