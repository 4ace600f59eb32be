"""Whether a model hub (Hugging Face, Kaggle) can be used right now, and if not, why."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from gemma_keras.checks import env_flag

HUB_HOSTS = {"hf": "huggingface.co", "kaggle": "www.kaggle.com"}
HUB_TITLES = {"hf": "Hugging Face", "kaggle": "Kaggle"}


def offline_reason(scheme: str) -> str | None:
    """None when the hub can be tried; otherwise a sentence that says why not."""
    if env_flag("GEMMA_KERAS_OFFLINE"):
        return "GEMMA_KERAS_OFFLINE is set"
    if scheme == "hf" and env_flag("HF_HUB_OFFLINE"):
        return "HF_HUB_OFFLINE is set"
    if scheme == "kaggle" and not _kaggle_credentials():
        return (
            "no Kaggle credentials were found (set KAGGLE_USERNAME and KAGGLE_KEY, "
            "or write ~/.kaggle/kaggle.json)"
        )
    return probe(HUB_HOSTS[scheme])


def _kaggle_credentials() -> bool:
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    config = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return (config / "kaggle.json").is_file()


def probe(host: str, timeout: float = 5.0) -> str | None:
    """None when `host:443` accepts a connection within `timeout`, else why not."""
    result: list[str | None] = ["timed out"]

    def attempt() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result[0] = None
        except OSError as exc:
            result[0] = f"{host} cannot be reached ({exc})"

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout + 1)
    return result[0] if result[0] != "timed out" else f"{host} did not answer within {timeout:g} s"
