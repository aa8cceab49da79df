"""The Hugging Face Hub as model and data loading see it: told to stay offline, or not reachable.

`from_pretrained` and `datasets.load_dataset` retry for ~25 s when the Hub cannot be reached, so both ask
here first (a 3 s TCP connect) and go straight to the local cache when the answer is no.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

# The environment switches that mean "never touch the network": the Hub's own and the datasets one.
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
TRUE_VALUES = ("1", "ON", "YES", "TRUE")


def offline() -> bool:
    """The user said offline: an offline variable now, or HF_HUB_OFFLINE as huggingface_hub read it at import."""
    from huggingface_hub import constants

    set_now = any(os.environ.get(name, "").upper() in TRUE_VALUES for name in OFFLINE_VARIABLES)
    return set_now or bool(constants.HF_HUB_OFFLINE)


def reachable(endpoint: str | None = None, timeout: float = 3.0) -> bool:
    """A TCP connect to the Hub endpoint (HF_ENDPOINT), bounded in time: DNS included, via a daemon thread."""
    from huggingface_hub import constants

    url = urlparse(endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    address = (url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80))
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def local_only() -> bool:
    """Use only what is already in the local caches: offline, or the Hub does not answer."""
    return offline() or not reachable()
