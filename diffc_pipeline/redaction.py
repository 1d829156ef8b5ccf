"""What counts as a secret by its name: one rule for every place that masks values (storage options in error
messages, options of a submitted command line), so that an option masked in one is masked in all."""

from __future__ import annotations

import re

# "key" anywhere (api_key, access_key, aws_secret_access_key, --key), passw (password, passwd), auth but not
# author. Over-masking a harmless value in a log costs nothing; under-masking leaks a credential.
SECRET_NAME = re.compile(r"secret|token|passw|credential|auth(?!or)|key", re.I)


def looks_secret(name: str) -> bool:
    """Whether an option named ``name`` holds a credential (its value is masked, never printed or stored)."""
    return SECRET_NAME.search(name) is not None
