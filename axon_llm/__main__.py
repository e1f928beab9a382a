"""``python -m axon_llm ...`` is the ``axon-llm`` command."""

import sys

from axon_llm.cli import main

if __name__ == "__main__":
    sys.exit(main())
