import sys

from pgclip.cli.main import main

sys.exit(main())
