"""Push a trained LoRA adapter folder (``runs/<name>/adapter``) to a Hugging Face Hub model repo.

Token handling and error messages are those of :mod:`labeling.hub`: the token comes from the argument (the app
passes a signed-in Space user's OAuth token), else ``HF_TOKEN``, else the ``hf auth login`` cache, and every
failure is a :class:`labeling.hub.HubError` whose message says what to do and never contains the token.
New repos are private unless asked otherwise.

Python: ``push_adapter("runs/cpu-lora/adapter", "alice/smollm2-refusals-lora") -> repo URL``.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from labeling.hub import (
    REPO_ID_PATTERN,
    HubError,
    hub_call,
    make_api,
    require_write_access,
    resolve_token,
    validate_repo_id,
)

REPO_TYPE = "model"
# Files a run writes next to the adapter that do not belong in a published adapter repo.
IGNORED = ["checkpoint-*", "*.pt", "optimizer*", "scheduler*", "rng_state*"]
_BASE_MODEL_LINE = re.compile(r"^base_model:\s*(.*?)\s*$", re.M)


def _card_for_hub(card: str) -> str:
    """The Hub rejects a card whose ``base_model`` is not a Hub model id; a run on a local folder writes a path
    there, so that line is dropped (the card's text still names the base)."""
    match = re.match(r"^---\n(.*?)\n---", card, re.S)
    if not match:
        return card
    header = match.group(1)
    base = _BASE_MODEL_LINE.search(header)
    if base is None or REPO_ID_PATTERN.match(base.group(1).strip("'\"")):
        return card
    fixed = _BASE_MODEL_LINE.sub("", header, count=1).replace("\n\n", "\n").strip("\n")
    return f"---\n{fixed}\n---" + card[match.end():]


def push_adapter(folder: str | Path, repo_id: str, token: str | None = None, private: bool = True) -> str:
    """Upload the adapter folder to ``repo_id`` (created if missing) in one commit; returns the repo's URL.

    Raises HubError (``no_token``, ``invalid_token``, ``read_only``, ``not_owner``, ``unreachable``, ``bad_input``
    ...) with a message for people.
    """
    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise HubError("bad_input", f"{folder} has no adapter_config.json, so it is not a LoRA adapter folder. "
                                    "Pick the adapter/ folder of a finished training run.")
    repo_id = validate_repo_id(repo_id)
    token = resolve_token(token)
    if not token:
        raise HubError("no_token", "No Hugging Face token found, so the adapter cannot be pushed. Set HF_TOKEN, run "
                                   "`hf auth login`, or sign in with Hugging Face in the app. The adapter stays in "
                                   f"{folder}.")
    api = make_api(token)
    require_write_access(api, repo_id, token)
    with hub_call(repo_id, token, f"create the model repo {repo_id}"):
        url = str(api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True))
    with tempfile.TemporaryDirectory(prefix="adapter-push-") as staging:
        # Upload a copy so the card can be made Hub-valid without touching the run's own folder.
        upload = Path(staging) / folder.name
        shutil.copytree(folder, upload, ignore=shutil.ignore_patterns(*IGNORED))
        card = upload / "README.md"
        if card.is_file():
            card.write_text(_card_for_hub(card.read_text(encoding="utf-8")), encoding="utf-8")
        with hub_call(repo_id, token, f"upload the adapter to {repo_id}"):
            api.upload_folder(folder_path=str(upload), repo_id=repo_id, repo_type=REPO_TYPE,
                              commit_message=f"Upload LoRA adapter {folder.parent.name or folder.name}")
    return url
