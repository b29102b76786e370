"""``python -m mrcnn``: the ``mrcnn`` command (``mrcnn.app``)."""

from mrcnn.app import main

if __name__ == "__main__":
    main()
