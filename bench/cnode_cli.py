"""Running the `cnode` CLI from a bench script, exactly as a user would (the benches that drive the CLI share it)."""

import subprocess
import sys
import time


def cnode(*args: str) -> float:
    """Run `cnode ARGS`, return its wall seconds; stop the bench on a failure."""
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "certify", *args], check=False)
    if done.returncode != 0:
        sys.exit(f"cnode {' '.join(args)} exited {done.returncode}")
    return time.perf_counter() - t
