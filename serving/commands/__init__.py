"""Sub-commands of the ``statlane`` CLI; each module exposes ``add_parser`` and ``run``."""
