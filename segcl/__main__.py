"""``python -m segcl`` runs the command-line tool."""

from segcl.cli import main

if __name__ == "__main__":
    main()
