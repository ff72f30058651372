"""``python -m sdpo_lightning fit|validate|test|predict ...``"""

from sdpo_lightning.cli import cli_main

if __name__ == "__main__":
    cli_main()
