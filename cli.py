"""jreg-lightning command line: ``python cli.py {fit,validate,test,...} --config ...``.

With ``jreg_tools`` deleted (a fork that keeps only the training core) it still
runs fit / validate / test.
"""

try:
    from jreg_tools.cli import main
except ModuleNotFoundError as err:
    if err.name != "jreg_tools":
        raise
    from jreg_lightning.cli import main

if __name__ == "__main__":
    main()
