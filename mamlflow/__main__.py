"""``python -m mamlflow``: the same CLI as ``metaflow`` and ``mamlflow``."""

from mamlflow.cli import main

if __name__ == "__main__":
    main()
