"""``python -m mcm_core.cli ...``: the ``mcm`` command line (the old module path; as before, its prog is ``mcm``)."""
from mcm_core.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
