"""jreg-lightning command line: ``python cli.py {fit,validate,test,...} --config ...``."""

from jreg_lightning.cli import main

if __name__ == "__main__":
    main()
