"""Publish to the Hugging Face Hub: an exported model folder (`push`) and the Gradio demo as a Space (`push-space`).

Both talk to the Hub through `HfApi`, at the endpoint named by `HF_ENDPOINT` (huggingface.co when unset). Every
check that can fail (files, pickles, repo id, token) runs before the first request, so a refused push uploads
nothing; the upload itself is one commit, so a repo never shows half an export.

    victorian-gpt push EXPORT_DIR --repo-id USER/NAME [--private] [--revision BRANCH] [--commit-message ...] [--token ...]
    victorian-gpt push NATIVE_DIR --repo-id USER/NAME-hf [--source-repo USER/NAME]    # a `convert --to transformers` folder
    victorian-gpt push ADAPTER_DIR --repo-id USER/NAME-dickens --base-model USER/NAME   # a LoRA adapter (a style)
    victorian-gpt push-space --repo-id USER/NAME-demo --model-id USER/NAME [--dataset ID] [--space-dir DIR]
        [--lora-adapters dickens=USER/NAME-dickens,hardy=USER/NAME-hardy@REVISION]   # the Space's Style menu

A style set is published as one repo per LoRA adapter (`push`, each with its card: `base_model`,
`base_model_relation: adapter`, `library_name: peft`, its before/after bits per byte), then the Space over the base
with `--lora-adapters` naming those repos (the Space variable LORA_ADAPTERS); each must be an adapter of --model-id.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, SpaceCard, SpaceCardData, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import validate_repo_id

from victorian_gpt.sources import DEFAULT_DATASET
from victorian_gpt.utils.hub import ADAPTER_CONFIG, is_hub_id

from .card import ExportError, build_card, check_card, is_adapter, missing_files, read_summary
from .native_card import build_native_card, is_native_folder, missing_native_files

try:  # the HTTP client under huggingface_hub: httpx2 from hub 2.x, httpx before
    from httpx2 import TransportError
except ImportError:
    from httpx import TransportError

# Pickled weights can run arbitrary code when loaded; the Hub flags them and we never publish them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
CARD_FILE = "README.md"
STYLE_NAME = re.compile(r"[A-Za-z0-9._-]+")  # a style's name: a valid model id, as the engine takes adapters' names
NO_STYLE = "none"  # the Space's Style menu's name for the model without an adapter


class PublishError(Exception):
    """A push that must not start: the message says what to fix."""


def _check_repo_id(repo_id: str, flag: str = "--repo-id") -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise PublishError(f"invalid {flag} {repo_id!r}: {error}") from None
    if repo_id.count("/") != 1:
        raise PublishError(f"invalid {flag} {repo_id!r}: expected USER/NAME (or ORG/NAME)")


def _resolve_token(token: str | None) -> str:
    token = token or get_token()  # HF_TOKEN, then the file `hf auth login` writes
    if not token:
        raise PublishError("no Hugging Face token: run `hf auth login`, set HF_TOKEN, or pass --token")
    return token


def _folder_files(folder: Path) -> list[Path]:
    """Files to upload, relative to `folder`: everything but hidden entries and Python caches."""
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
            files.append(rel)
    return files


def _hub() -> HfApi:
    # Read at call time, not import time, so `HF_ENDPOINT=… victorian-gpt push` works however we were started.
    return HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)


def plan_model_upload(export_dir: Path, repo_id: str, source_repo: str | None = None,
                      base_model: str | None = None) -> list[CommitOperationAdd]:
    """Check an export folder and list the operations of its one commit; raise PublishError on anything wrong.

    The card is the folder's README.md when there is one (a hand-edited card wins); otherwise it is built here
    from the folder and training_summary.json, naming `repo_id` in its usage snippet. A native folder (written by
    `victorian-gpt convert --to transformers`: a Qwen3 / Llama / GPT-2 config, no remote code) gets the native card,
    which names its class and the engines that serve it, and `source_repo` (the remote-code repo) when given.
    `base_model` (a fine-tune's base as a Hub id, when training read it from a local folder) goes into a built card's
    base_model; a folder's own README.md is not rewritten, so it is refused there.
    """
    if not export_dir.is_dir():
        raise PublishError(f"{export_dir} is not a folder")
    files = _folder_files(export_dir)
    pickles = [str(f) for f in files if f.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise PublishError(
            f"refusing to upload pickled weights ({', '.join(pickles)}): they can run code when loaded. "
            "Publish safetensors only (save_pretrained(..., safe_serialization=True)) and remove these files."
        )
    native = is_native_folder(export_dir)
    if native:
        code = [str(f) for f in files if f.suffix == ".py"]
        if code:
            raise PublishError(f"{export_dir} is a native folder but holds Python files ({', '.join(code)}): "
                               "a native repo runs no remote code; remove them")
        missing = missing_native_files(export_dir)
    else:
        missing = missing_files(export_dir)
    if missing:
        kind = "native folder" if native else "export"
        raise PublishError(f"{export_dir} is not a complete {kind}: missing {', '.join(missing)}")
    if base_model and (native or (export_dir / CARD_FILE).is_file()):
        where = "a native folder's card names its source repo (--source-repo)" if native else (
            f"{export_dir / CARD_FILE} exists and is uploaded as it is: write it with `victorian-gpt card "
            f"{export_dir} --repo-id {repo_id} --base-model {base_model}`, or remove it")
        raise PublishError(f"--base-model is for a card built at push time; {where}")
    operations = [CommitOperationAdd(path_in_repo=f.as_posix(), path_or_fileobj=str(export_dir / f)) for f in files]
    if is_adapter(export_dir):
        hub_base = _adapter_base(export_dir, base_model)
        operations = [_with_hub_base(op, export_dir, hub_base) if op.path_in_repo == ADAPTER_CONFIG else op
                      for op in operations]
    if not (export_dir / CARD_FILE).is_file():
        try:
            if native:
                card = build_native_card(export_dir, repo_id=repo_id, source_repo=source_repo)
            else:
                card = build_card(export_dir, repo_id=repo_id, base_model=base_model)
            check_card(card)
        except (ExportError, ValueError, KeyError) as error:
            raise PublishError(f"cannot build the model card: {error}") from None
        operations.append(CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=str(card).encode()))
    else:
        try:
            card = ModelCard.load(export_dir / CARD_FILE)
            check_card(card)
        except ValueError as error:
            raise PublishError(f"{export_dir / CARD_FILE} is not a valid model card: {error}") from None
        if repo_id not in card.text:
            print(
                f"note: {export_dir / CARD_FILE} never names {repo_id}; its usage snippet may point elsewhere "
                f"(rewrite it with `victorian-gpt card {export_dir} --repo-id {repo_id}`)",
                file=sys.stderr,
            )
    return operations


def _adapter_base(export_dir: Path, base_model: str | None) -> str:
    """The Hub id of a LoRA adapter's base: `--base-model`, else its card's `base_model` (a README.md in the folder),
    else the base training read when that was a Hub id. An adapter is only usable over its base, so the Hub (its model
    tree) and every loader need that id: PublishError without one."""
    if base_model:
        return base_model
    if (export_dir / CARD_FILE).is_file():
        base = ModelCard.load(export_dir / CARD_FILE).data.get("base_model")
        where = f"its card ({export_dir / CARD_FILE}) names no base_model"
    else:
        try:
            finetuning = read_summary(export_dir).finetuning
        except ExportError as error:
            raise PublishError(f"cannot build the model card: {error}") from None
        base = finetuning.base_model if finetuning is not None else None
        where = f"training read its base from a local folder ({base})" if base else "its summary names no base"
    if isinstance(base, list):
        base = base[0] if base else None
    if not (base and is_hub_id(base) and base.count("/") == 1):
        raise PublishError(f"{export_dir} is a LoRA adapter and {where}: pass --base-model USER/NAME, the base's Hub "
                           "repo, which its card and adapter_config.json then name")
    return base


def _with_hub_base(operation: CommitOperationAdd, export_dir: Path, hub_base: str) -> CommitOperationAdd:
    """adapter_config.json as uploaded: `base_model_name_or_path` names the base on the Hub (training wrote the
    folder it read), so peft's and transformers' adapter loading find the base from the Hub repo alone."""
    config = json.loads((export_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if config.get("base_model_name_or_path") == hub_base:
        return operation
    config["base_model_name_or_path"] = hub_base
    return CommitOperationAdd(path_in_repo=ADAPTER_CONFIG,
                              path_or_fileobj=(json.dumps(config, indent=2, sort_keys=True) + "\n").encode())


def push_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="victorian-gpt push",
        description="Publish an exported model folder to the Hugging Face Hub in one commit (safetensors only).",
    )
    parser.add_argument(
        "export_dir",
        help="folder written by training's export (save_model_folder), or a native folder written by "
        "`victorian-gpt convert --to transformers` (publish that to its own repo, e.g. USER/NAME-hf)",
    )
    parser.add_argument("--repo-id", required=True, help="USER/NAME of the model repo (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--revision", help="branch to commit to (created from main if new; default main)")
    parser.add_argument("--commit-message", default="Upload VictorianGPT model", help="message of the commit")
    parser.add_argument("--token", help="Hugging Face token (default: HF_TOKEN or the `hf auth login` token)")
    parser.add_argument(
        "--source-repo", help="native folder only: the remote-code repo it was converted from, named in its card"
    )
    parser.add_argument(
        "--base-model", help="a fine-tune's base as a Hub id USER/NAME (when training read it from a local folder), "
        "for the card's base_model: the Hub's model tree (a LoRA adapter's adapter_config.json names it too)"
    )
    args = parser.parse_args(argv)

    try:
        _check_repo_id(args.repo_id)
        for flag, repo in (("--source-repo", args.source_repo), ("--base-model", args.base_model)):
            if repo:
                _check_repo_id(repo, flag)
        token = _resolve_token(args.token)
        operations = plan_model_upload(Path(args.export_dir), args.repo_id, source_repo=args.source_repo,
                                       base_model=args.base_model)
    except PublishError as error:
        print(f"victorian-gpt push: error: {error}", file=sys.stderr)
        return 2

    api = _hub()

    def upload():
        # private=None (not False) when --private is absent: an existing repo keeps its visibility.
        repo_url = api.create_repo(args.repo_id, token=token, private=args.private or None, exist_ok=True)
        if args.revision:
            api.create_branch(args.repo_id, branch=args.revision, token=token, exist_ok=True)
        print(f"uploading {len(operations)} files to {repo_url} ...")
        return api.create_commit(
            args.repo_id,
            operations=operations,
            commit_message=args.commit_message,
            revision=args.revision,
            token=token,
        )

    status, commit = _on_hub("victorian-gpt push", api, upload)
    if status:
        return status
    print(commit.commit_url)
    print(f"pin this version with revision={commit.oid!r}")
    return 0


def _on_hub(prog: str, api: HfApi, requests):
    """Run `requests()` against the Hub; its refusals and an unreachable Hub become one-line errors.

    Returns (exit status, what `requests` returned): 0 on success, 2 for our own refusal, 1 for the Hub's.
    """
    try:
        return 0, requests()
    except PublishError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2, None
    except (HfHubHTTPError, ValueError) as error:  # ValueError: the Hub's metadata validation rejected the card
        print(f"{prog}: error: the Hub refused the upload: {error}", file=sys.stderr)
        return 1, None
    except TransportError as error:
        print(f"{prog}: error: cannot reach the Hub at {api.endpoint}: {error}", file=sys.stderr)
        return 1, None


def _package_dir(name: str) -> Path:
    """Where an installed top-level package of this project lives, found without importing it (the Space's app pulls
    in gradio and the model stack)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise PublishError(f"cannot find the {name} package; pass --space-dir")
    return Path(list(spec.submodule_search_locations)[0])


def space_bundle() -> list[tuple[str, Path]]:
    """The project's Space as it is uploaded: spaces_app/ (app.py, requirements.txt), with beside it a copy of the
    generation engine (serving/textgen/, as textgen/) and of the shared rules it loads models by
    (victorian_gpt/utils/), so that the Space runs without the package installed. (path in the repo, file) pairs."""
    parts = [("", _package_dir("spaces_app")), ("textgen/", _package_dir("serving") / "textgen"),
             ("victorian_gpt/utils/", _package_dir("victorian_gpt") / "utils")]
    return [(prefix + f.as_posix(), folder / f) for prefix, folder in parts for f in _folder_files(folder)]


def load_space_card(space_dir: Path) -> SpaceCard:
    """The app's README (its own title, emoji, app_file…) with `sdk: gradio`; a minimal one if it has none."""
    readme = space_dir / CARD_FILE
    if readme.is_file():
        card = SpaceCard.load(readme)
    else:
        card = SpaceCard.from_template(SpaceCardData(title="VictorianGPT", sdk="gradio", app_file="app.py"))
    card.data.sdk = "gradio"
    if not card.data.get("app_file"):
        card.data.app_file = "app.py"
    return card


def plan_space_upload(space_dir: Path | None = None) -> tuple[list[tuple[str, Path]], SpaceCard]:
    """The Space's files (bar README.md) as (path in the repo, file) pairs, and its card: `space_dir` as it is, or
    by default the project's Space bundle (`space_bundle`). Raises PublishError if the app could not run."""
    if space_dir is None:
        files, readme_dir = space_bundle(), _package_dir("spaces_app")
    elif not space_dir.is_dir():
        raise PublishError(f"{space_dir} is not a folder")
    else:
        files, readme_dir = [(f.as_posix(), space_dir / f) for f in _folder_files(space_dir)], space_dir
    files = [(name, path) for name, path in files if not name.endswith(".pyc") and name != CARD_FILE]
    card = load_space_card(readme_dir)
    names = {name for name, _ in files}
    for needed in (card.data.app_file, "requirements.txt"):
        if needed not in names:
            raise PublishError(f"{space_dir or readme_dir} has no {needed}: a Gradio Space needs it")
    return files, card


def push_space_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="victorian-gpt push-space",
        description="Publish the Gradio demo (spaces_app/) as a Hugging Face Space that serves MODEL_ID.",
    )
    parser.add_argument("--repo-id", required=True, help="USER/NAME of the Space (created if missing)")
    parser.add_argument("--model-id", required=True, help="USER/NAME of the model repo the Space serves")
    parser.add_argument(
        "--dataset", help="dataset id named in the Space metadata (default: the model card's, else emozilla/pg19)"
    )
    parser.add_argument("--space-dir", help="folder to upload as it is (default: the project's Space: spaces_app/ with "
                        "copies of the engine serving/textgen/ and of victorian_gpt/utils/)")
    parser.add_argument(
        "--lora-adapters", metavar="NAME=USER/REPO[@REVISION],...",
        help="styles for the Space's Style menu: LoRA adapters of --model-id already on the Hub (victorian-gpt push), "
        "each under a name; set as the Space variable LORA_ADAPTERS and named in the Space's metadata")
    parser.add_argument("--private", action="store_true", help="create the Space private")
    parser.add_argument("--commit-message", default="Upload VictorianGPT demo", help="message of the commit")
    parser.add_argument("--token", help="Hugging Face token (default: HF_TOKEN or the `hf auth login` token)")
    args = parser.parse_args(argv)

    try:
        _check_repo_id(args.repo_id)
        _check_repo_id(args.model_id)
        styles = parse_styles(args.lora_adapters) if args.lora_adapters else {}
        token = _resolve_token(args.token)
        files, card = plan_space_upload(Path(args.space_dir) if args.space_dir else None)
    except PublishError as error:
        print(f"victorian-gpt push-space: error: {error}", file=sys.stderr)
        return 2

    api = _hub()

    def upload():
        card.data.datasets = [args.dataset or _model_dataset(api, args.model_id, token)]
        for name, (repo, revision) in styles.items():  # each an adapter of the model, on the Hub, before any write
            _check_style(api, name, repo, revision, args.model_id, token)
        card.data.models = [args.model_id, *dict.fromkeys(repo for repo, _ in styles.values())]
        operations = [CommitOperationAdd(name, str(path)) for name, path in files]
        operations.append(CommitOperationAdd(CARD_FILE, str(card).encode()))
        repo_url = api.create_repo(
            args.repo_id, token=token, repo_type="space", space_sdk="gradio", private=args.private or None, exist_ok=True
        )
        # The app reads the model to serve from MODEL_ID (and its styles from LORA_ADAPTERS); a Space variable
        # survives later pushes of the app.
        api.add_space_variable(args.repo_id, "MODEL_ID", args.model_id, token=token)
        if styles:
            api.add_space_variable(args.repo_id, "LORA_ADAPTERS", styles_value(styles), token=token)
        print(f"uploading {len(operations)} files to {repo_url} ...")
        return api.create_commit(
            args.repo_id, operations=operations, commit_message=args.commit_message, repo_type="space", token=token
        )

    status, commit = _on_hub("victorian-gpt push-space", api, upload)
    if status:
        return status
    print(commit.commit_url)
    return 0


def parse_styles(value: str) -> dict[str, tuple[str, str | None]]:
    """`--lora-adapters` of push-space: {name: (Hub repo, revision or None)}, in order. The Space reads the same
    syntax from LORA_ADAPTERS (`textgen.parse_lora_adapters`, which also takes local folders; a Space has only the
    Hub). PublishError (one line) for anything else."""
    styles: dict[str, tuple[str, str | None]] = {}
    for item in value.split(","):
        name, equals, source = (part.strip() for part in item.partition("="))
        if not equals or not name or not source:
            raise PublishError(f"--lora-adapters: expected NAME=USER/REPO[@REVISION], got {item.strip()!r}")
        if not STYLE_NAME.fullmatch(name) or name == NO_STYLE:
            raise PublishError(f"--lora-adapters: bad style name {name!r} (letters, digits, '.', '_', '-'; "
                               f"{NO_STYLE!r} is the model without an adapter)")
        if name in styles:
            raise PublishError(f"--lora-adapters: style {name!r} is given twice")
        repo, _, revision = source.partition("@")
        _check_repo_id(repo, f"--lora-adapters {name}=")
        styles[name] = (repo, revision or None)
    return styles


def styles_value(styles: dict[str, tuple[str, str | None]]) -> str:
    """The LORA_ADAPTERS value the Space reads: `name=USER/REPO[@REVISION]`, comma-separated."""
    return ",".join(f"{name}={repo}" + (f"@{revision}" if revision else "") for name, (repo, revision) in styles.items())


def _check_style(api: HfApi, name: str, repo: str, revision: str | None, model_id: str, token: str) -> None:
    """A style of the Space must be a LoRA adapter on the Hub whose card names `model_id` as its base: a Space
    with a missing adapter, or one of another model, would only fail once it boots."""
    where = f"{repo}@{revision}" if revision else repo
    try:
        info = api.model_info(repo, revision=revision, token=token)
    except RevisionNotFoundError:
        raise PublishError(f"style {name}: {repo} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise PublishError(f"style {name}: {repo} not found on the Hub: publish the adapter first (victorian-gpt "
                           f"push ADAPTER_DIR --repo-id {repo} --base-model {model_id})") from None
    if ADAPTER_CONFIG not in {s.rfilename for s in info.siblings or []}:
        raise PublishError(f"style {name}: {where} is not a LoRA adapter (it has no {ADAPTER_CONFIG})")
    base = (info.card_data or {}).get("base_model")
    bases = base if isinstance(base, list) else [base] if base else []
    if model_id not in bases:
        named = f"names {', '.join(bases)} as its base" if bases else "names no base_model in its card"
        raise PublishError(f"style {name}: {where} {named}, not --model-id {model_id}: a style must be an adapter "
                           "of the model the Space serves")


def _model_dataset(api: HfApi, model_id: str, token: str) -> str:
    """The dataset the model's card names (the project's default dataset when it names none).

    Also the check that the model exists: a Space serving a missing model would only fail once it boots.
    """
    try:
        info = api.model_info(model_id, token=token)
    except RepositoryNotFoundError:
        raise PublishError(f"model {model_id} not found on the Hub: publish it first (victorian-gpt push)") from None
    datasets = (info.card_data or {}).get("datasets")
    if datasets:
        return datasets[0] if isinstance(datasets, list) else datasets
    return DEFAULT_DATASET
