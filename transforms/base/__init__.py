"""The ground floor of the shared code, which every other part imports and which imports nothing of the
project: errors that name the file or key (:mod:`.errors`), command-line values (:mod:`.values`), typed
and self-describing construction and each bundle's own ``scripts`` package (:mod:`.describe`), pretrained
parts by config key (:mod:`.pretrained`). It lies in ``transforms``, the lowest of the shared packages:
``transforms`` imports it, ``common`` imports both.
"""

from . import errors, values, describe, pretrained
