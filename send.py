"""Entry point: `python send.py --help`. All logic lives in the `dripmail` package."""

from dripmail.cli import main

if __name__ == "__main__":
    main()
