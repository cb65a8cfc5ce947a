"""``python -m mcm_core train|eval|edit ...``: the same command line as the ``mcm`` script."""
from mcm_core.cli import main

if __name__ == "__main__":
    raise SystemExit(main(prog="python -m mcm_core"))
