"""Offline preparation tools, run before any training (each a ``python -m missrec_recbole.tools.<name>`` command):
``amazon`` (raw Amazon reviews -> atomic files), ``images`` (download item images), ``features`` (text/image
feature files), ``prepare`` (a dataset folder ready to train), ``demo`` (generated demo domains), ``merge``
(pre-training domains into one dataset), ``split_users`` (two user halves sharing items), ``inspect``
(statistics and validation). They build on the config and data layers; nothing below imports them."""
