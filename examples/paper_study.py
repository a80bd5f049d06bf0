"""The paper's study: the same as `cnode study` (see `cnode study --help`; the code is certify/study.py).

    python examples/paper_study.py --quick          # smoke test on the embedded subset, minutes
    python examples/paper_study.py --out runs/study # the full run (docs/RESULTS.md has its time)
"""

import sys

from certify.cli import main

if __name__ == "__main__":
    sys.exit(main(["study", *sys.argv[1:]]))
