import sys

from flare_seg.cli.main import main

sys.exit(main())
