"""jreg-lightning command line: ``python cli.py {fit,validate,test,...} --config ...``.

``--help`` lists the commands without importing torch. With ``jreg_tools`` deleted
(a fork that keeps only the training core) fit / validate / test still run.
"""

import importlib.util
import sys
from pathlib import Path

# Loaded by path: importing the jreg_lightning package loads torch (its plain-torch API),
# and the command list must not wait for that.
_spec = importlib.util.spec_from_file_location(
    "jreg_lightning_usage", Path(__file__).resolve().parent / "jreg_lightning" / "usage.py"
)
_usage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_usage)
usage, wants_usage = _usage.usage, _usage.wants_usage

try:
    from jreg_tools.commands import SUMMARIES
except ModuleNotFoundError as err:
    if err.name != "jreg_tools":
        raise
    SUMMARIES = {}


def main() -> None:
    """Print the command list, or run the command (the tools' CLI when they are installed)."""
    if wants_usage(sys.argv[1:]):
        print(usage(SUMMARIES))
        raise SystemExit(0 if sys.argv[1:] else 2)
    if SUMMARIES:
        from jreg_tools.cli import main as run
    else:
        from jreg_lightning.cli import main as run
    run()


if __name__ == "__main__":
    main()
