import sys

from safepretrain.cli import main

if __name__ == "__main__":  # spawned data workers import this module again
    sys.exit(main())
