"""The command line of a bundle run (:mod:`.config`: its check, and the one-line summary of a failed run)
and the checks of a tool's flags (:mod:`.flags`); which ids a run of a merged config reads (:mod:`.config_ids`). Errors and value coercion lie below, in
:mod:`transforms.base`.
"""

from . import config, config_ids, flags
