import sys

from safepretrain.cli import main

sys.exit(main())
