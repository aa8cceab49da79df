"""`sentune push RUN_DIR --repo-id NAME`: upload `best/` (model card included) to the Hub in one commit.

The upload plan (which local file goes where in the repository) is built and checked before anything
touches the network, and all files go in one `HfApi.create_commit`, which the Hub applies whole or not
at all: a lost connection never leaves half a model in the repository. Offline, the command says
what it could not reach and that the folder is ready to push, and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sentune.errors import ConfigError, ModelError, OfflineError, SentuneError

ONNX_PREFIX = "onnx"


@dataclass
class Plan:
    repo_id: str
    folder: Path  # the model folder (a run's best/)
    files: dict[str, Path]  # path in the repository -> local file
    private: bool = False

    def lines(self) -> list[str]:
        return [f"{dest}  <-  {src}" for dest, src in sorted(self.files.items())]


def model_folder(run_dir: str | Path) -> tuple[Path, Path | None]:
    """(the folder to upload, the run directory when it is one): RUN_DIR/best, or a model folder itself."""
    path = Path(run_dir)
    if (path / "best" / "config.json").is_file():
        return path / "best", path
    if (path / "config.json").is_file():
        return path, None
    raise ConfigError(f"{run_dir} is neither a run directory (no best/config.json) nor a model folder "
                      "(no config.json); pass the directory `sentune train` wrote")


def plan_upload(run_dir: str | Path, repo_id: str, private: bool = False, include_onnx: bool = False) -> Plan:
    """What would be uploaded; writes the model card first when a run's best/ has none yet."""
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ConfigError(f"--repo-id {repo_id!r} must look like OWNER/NAME (a user or organisation, then the model)")
    folder, run = model_folder(run_dir)
    if not (folder / "README.md").is_file():
        if run is None:
            raise ModelError(f"{folder} has no model card (README.md); add one with: sentune evaluate {folder} "
                             "--test-file FILE --update-card")
        from sentune.card import write_card

        write_card(run)  # runs from before cards existed
    files = folder_files(folder)
    if include_onnx:
        files.update(onnx_files(folder))
    return Plan(repo_id, folder, files, private)


def onnx_files(folder: Path) -> dict[str, Path]:
    """The `sentune export` folder next to best/ (best-onnx, or best-onnx-int8), under onnx/ in the repo."""
    for candidate in (folder.with_name(f"{folder.name}-onnx"), folder.with_name(f"{folder.name}-onnx-int8")):
        if (candidate / "model.onnx").is_file():
            return {f"{ONNX_PREFIX}/{dest}": f for dest, f in folder_files(candidate).items()}
    raise ConfigError(f"--include-onnx: no ONNX export next to {folder}; create one with: sentune export {folder}")


def folder_files(folder: Path) -> dict[str, Path]:
    """Every file the folder holds (hidden ones left out), by its path inside it. A link that leads out of the
    folder is refused: push uploads the model, never what a link points at elsewhere (a key, a home folder)."""
    root = folder.resolve()
    files = {}
    for f in sorted(folder.rglob("*")):
        if f.name.startswith(".") or not f.is_file():
            continue
        target = f.resolve()
        if not target.is_relative_to(root):
            raise ConfigError(f"{f} links to {target}, outside {folder}; push uploads only what the folder "
                              "holds: put a copy there instead of the link, or remove it")
        files[f.relative_to(folder).as_posix()] = f
    return files


def push(plan: Plan, api=None) -> str:
    """Create the repository if needed and upload every planned file in one commit; returns the commit URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = api or HfApi()
    operations = [CommitOperationAdd(path_in_repo=dest, path_or_fileobj=str(src)) for dest, src in plan.files.items()]
    try:
        api.create_repo(plan.repo_id, private=plan.private, exist_ok=True, repo_type="model")
        info = api.create_commit(plan.repo_id, operations, commit_message=f"sentune push: {plan.folder.name}",
                                 repo_type="model")
    except Exception as e:  # noqa: BLE001 - sorted into user-facing errors below, else re-raised
        raise hub_error(e, plan) from None
    return str(getattr(info, "commit_url", info))


def hub_error(e: Exception, plan: Plan) -> Exception:
    """One clear line for what the user can fix: no network, not logged in, refused; a bug stays itself."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    ready = f"nothing was uploaded; {plan.folder} is ready to push ({len(plan.files)} files) when the Hub is reachable"
    kinds = {c.__name__ for c in type(e).__mro__}
    if isinstance(e, (OSError, ConnectionError)) or kinds & {"TransportError", "TimeoutException"}:
        return OfflineError(f"cannot reach the Hub at {constants.ENDPOINT} ({type(e).__name__}: {e}); {ready}")
    if isinstance(e, HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            return SentuneError(f"the Hub refused {plan.repo_id} ({status}): log in with `hf auth login` or set "
                                f"HF_TOKEN to a token that may write there; nothing was uploaded")
        return SentuneError(f"the Hub answered {status} for {plan.repo_id}: {str(e).splitlines()[0]}; "
                            "nothing was uploaded")
    return e
