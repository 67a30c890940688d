"""Sources on the Hugging Face Hub: `ORG/NAME[@REVISION]` and `hf://ORG/NAME[@REVISION][/PATH]` made a local path.

Everything goes through huggingface_hub (its cache, its downloads, its errors). A revision the local cache holds
with every file the checkpoint needs is read from there without contacting the Hub; otherwise, unless
HF_HUB_OFFLINE=1, only those files are downloaded into the cache (huggingface_hub's progress bars). An existing
local path always wins. Rules for what a repo folder needs (`needed_files`):
  - HF layout (any *.safetensors in the folder): the safetensors, their index, config.json, generation_config.json
    and the tokenizer files formats.hf lists;
  - Meta layout (consolidated.NN.pth): those, params.json, tokenizer.model and checklist.chk (`hf://.../original`);
  - GGUF: a repo holds several quantizations, so the file is named: `hf://ORG/NAME/model-Q4_K_M.gguf` (the first
    file of a split names them all); a folder with only .gguf files is an error that lists them.
huggingface_hub is imported only when a source is a repo id.
"""
from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from .errors import BadInput
from .formats import gguf, hf, meta

SCHEME = "hf://"
# ORG/NAME[@REVISION]: one slash, no leading ./ or /. A revision ends at the next "/", except a pull request's
# refs/pr/N (as huggingface_hub's HfFileSystem reads it); any other revision holding "/" is percent-encoded.
REV = r"(?:@(?P<rev>refs/pr/\d+|[^/@\s]+))?"
BARE_RE = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)" + REV)
URI_RE = re.compile(r"(?P<repo>[^/@]+/[^/@]+)" + REV + r"(?:/(?P<path>.*))?")
# a bare name ending like a checkpoint file is a mistyped local path, never a repo id
FILE_SUFFIXES = (".gguf", ".safetensors", ".pth", ".pt", ".json", ".bin")
META_FILES = ("params.json", *meta.TOKENIZER_FILES, "checklist.chk")
HF_FILES = (hf.INDEX, "config.json", *hf.AUX_FILES, *hf.TOKENIZER_FILES)
LOGIN = "log in with `hf auth login` or set HF_TOKEN"


@dataclass
class Ref:
    """A parsed repo source: repo id, revision (None: the default branch), path inside the repo ('' = root)."""
    arg: str
    repo: str
    revision: str | None
    path: str

    @property
    def uri(self) -> str:
        """The hf:// form of a sibling path inside the same repo and revision."""
        return f"{SCHEME}{self.repo}{'@' + self.revision if self.revision else ''}"


@dataclass
class Source:
    """A source argument made local: the path readers open; for a repo, where it came from."""
    path: Path
    ref: Ref | None = None
    meta_beside: str | None = None  # how to name the Meta checkpoint in original/ beside an HF one

    @property
    def name(self) -> str | None:
        return self.ref.repo.split("/")[1] if self.ref else None


def parse(arg: str) -> Ref | None:
    """The repo a source names, or None when it is no repo id (a local path, existing or not)."""
    if arg.startswith(SCHEME):
        m = URI_RE.fullmatch(arg[len(SCHEME):])
        if not m:
            raise BadInput(f"{arg}: expected hf://ORG/NAME[@REVISION][/PATH]")
    else:
        m = BARE_RE.fullmatch(arg)
        if not m or arg.lower().endswith(FILE_SUFFIXES):
            return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(m.group("repo"))
    except HFValidationError as e:
        if arg.startswith(SCHEME):
            raise BadInput(f"{arg}: {m.group('repo')} is not a Hugging Face repo id ({e})") from None
        return None
    rev = unquote(m.group("rev")) if m.group("rev") else None
    path = (m.groupdict().get("path") or "").strip("/")
    if any(part in ("", ".", "..") for part in path.split("/")) and path:
        raise BadInput(f"{arg}: the path inside the repo must not hold empty, . or .. parts")
    return Ref(arg, m.group("repo"), rev, path)


def resolve(arg) -> Source:
    """A local path for a source argument: an existing path as it is; a repo id from the cache or downloaded."""
    if not isinstance(arg, str) or Path(arg).exists():
        p = Path(arg)
        beside = p / "original"
        return Source(p, meta_beside=f"{str(arg).rstrip('/')}/original"
                      if p.is_dir() and beside.is_dir() and meta.detect(beside) else None)
    ref = parse(arg)
    if ref is None:
        return Source(Path(arg))  # formats.detect reports it missing
    from huggingface_hub import constants
    snap, listing = _cached(ref)
    if snap is not None:
        needed, verdict = _try_select(listing, ref)
        if needed is not None:
            missing = _missing(snap, ref, needed)
            if not missing:
                return _source(snap, ref, listing)
            if constants.HF_HUB_OFFLINE:
                raise BadInput(f"{ref.arg}: the cached snapshot {snap} lacks {_few(missing)}, and HF_HUB_OFFLINE=1 "
                               f"forbids downloading: unset HF_HUB_OFFLINE")
        elif constants.HF_HUB_OFFLINE or verdict.complete:
            raise BadInput(f"{verdict}" + ("" if verdict.complete else
                           " in the cached snapshot (HF_HUB_OFFLINE=1: unset it to look on the Hub)"))
    elif constants.HF_HUB_OFFLINE:
        raise BadInput(f"{ref.arg}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE=1 "
                       f"forbids downloading it: unset HF_HUB_OFFLINE, or check the repo id and revision")
    return _download(ref)


class _Verdict(str):
    """Why a listing holds nothing to read; complete: the listing is the repo's whole (not just what is on disk)."""
    complete = False


def _try_select(listing: tuple[set[str], bool], ref: Ref):
    files, complete = listing
    try:
        return needed_files(files, ref), None
    except BadInput as e:
        v = _Verdict(str(e))
        v.complete = complete
        return None, v


def needed_files(files: set[str], ref: Ref) -> list[str]:
    """The repo files (paths from the repo root) that reading ref.path needs, chosen from the repo's file list."""
    where = ref.arg
    if ref.path in files:  # a file inside the repo
        folder, _, name = ref.path.rpartition("/")
        here = _folder(files, folder)
        if name.endswith(".gguf"):
            m = gguf.SPLIT_RE.match(name)
            names = [name] if not m else [f"{m.group('stem')}-{i:05d}-of-{m.group('n')}.gguf"
                                          for i in range(1, int(m.group("n")) + 1)]
        elif name.endswith(".safetensors"):
            names = [name, *(n for n in HF_FILES if n in here and n != hf.INDEX)]
        elif name.endswith((".pth", ".pt")):
            names = [name, *(n for n in META_FILES if n in here and n != "checklist.chk")]
        else:
            raise BadInput(f"{where}: {ref.path} is not a checkpoint file weightsmith reads (.gguf, .safetensors, "
                           f".pth)")
        return [_join(folder, n) for n in names]
    here = _folder(files, ref.path)
    shown = f"{ref.path}/" if ref.path else "the repo root"
    if not here:
        raise BadInput(f"{where}: the repo has no file or folder {ref.path!r}" if ref.path else
                       f"{where}: the repo holds no files")
    if any(n.endswith(".safetensors") for n in here):
        names = sorted(n for n in here if n.endswith(".safetensors")) + [n for n in HF_FILES if n in here]
    elif any(meta.SHARD_RE.fullmatch(n) for n in here):
        names = sorted(n for n in here if meta.SHARD_RE.fullmatch(n)) + [n for n in META_FILES if n in here]
    else:
        ggufs = sorted(n for n in here if n.endswith(".gguf"))
        if ggufs:
            first = [n for n in ggufs if not gguf.SPLIT_RE.match(n) or gguf.SPLIT_RE.match(n).group("i") == "00001"]
            raise BadInput(f"{where}: {shown} holds GGUF files; name one, e.g. {ref.uri}/{_join(ref.path, first[0])} "
                           f"(there: {_few(first)})")
        hint = ""
        if any(f.startswith(_join(ref.path, "original/")) for f in files):
            hint = f"; original/ holds a Meta checkpoint: {ref.uri}/{_join(ref.path, 'original')}"
        raise BadInput(f"{where}: no checkpoint weightsmith reads at {shown} (no *.safetensors, no "
                       f"consolidated.NN.pth){hint}")
    return [_join(ref.path, n) for n in names]


def _folder(files: set[str], folder: str) -> set[str]:
    """Names of the files directly in a repo folder."""
    prefix = folder + "/" if folder else ""
    return {f[len(prefix):] for f in files if f.startswith(prefix) and "/" not in f[len(prefix):]}


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def _few(names, n=4) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _missing(snap: Path, ref: Ref, needed: list[str]) -> list[str]:
    missing = [n for n in needed if not (snap / n).is_file()]
    for n in needed:  # a sharded HF checkpoint needs every shard its index names
        if n.endswith(hf.INDEX) and (snap / n).is_file():
            try:
                shards = set(json.loads((snap / n).read_text()).get("weight_map", {}).values())
            except (OSError, ValueError, AttributeError, TypeError):
                continue  # the reader says what is wrong with it
            folder = n[:-len(hf.INDEX)].rstrip("/")
            missing += [f for f in (_join(folder, s) for s in sorted(shards) if isinstance(s, str))
                        if not (snap / f).is_file() and f not in missing]
    return missing


def _cached(ref: Ref) -> tuple[Path | None, tuple[set[str], bool]]:
    """The cached snapshot of ref's revision and the repo's files at that commit: its tree listing if
    huggingface_hub cached one (complete), else the files on disk. Never contacts the Hub."""
    import huggingface_hub as hh
    try:  # allow_patterns=[]: locate the snapshot only (no file of it is required to be complete)
        snap = Path(hh.snapshot_download(ref.repo, revision=ref.revision, local_files_only=True, allow_patterns=[]))
    except (hh.errors.LocalEntryNotFoundError, FileNotFoundError):
        return None, (set(), False)
    files = {os.path.relpath(os.path.join(d, n), snap).replace(os.sep, "/")
             for d, _, names in os.walk(snap) for n in names if os.path.isfile(os.path.join(d, n))}
    tree = getattr(hh, "get_cached_repo_tree", None)  # huggingface_hub >= 1.x keeps each commit's file list
    if tree is not None:
        try:
            listed = {f.path for f in tree(ref.repo, revision=snap.name)}
        except Exception:  # noqa: BLE001 - no listing cached (CachedRepoTreeNotFoundError) or an older layout
            listed = None
        if listed:
            return snap, (files | listed, True)
    return snap, (files, False)


def _source(snap: Path, ref: Ref, listing: tuple[set[str], bool]) -> Source:
    files = listing[0]
    orig = _folder(files, _join(ref.path, "original"))
    beside = ref.path not in files and any(meta.SHARD_RE.fullmatch(n) for n in orig)
    return Source(snap / ref.path if ref.path else snap, ref,
                  meta_beside=f"{ref.uri}/{_join(ref.path, 'original')}" if beside else None)


def _download(ref: Ref) -> Source:
    import huggingface_hub as hh
    err = hh.errors
    try:
        info = hh.HfApi().model_info(ref.repo, revision=ref.revision)
        files = {s.rfilename for s in info.siblings or []}
        if not files:
            files = set(hh.HfApi().list_repo_files(ref.repo, revision=ref.revision))
        needed = needed_files(files, ref)
        if getattr(info, "gated", False):  # ask for one file first: no access fails before any progress bar
            hh.get_hf_file_metadata(hh.hf_hub_url(ref.repo, needed[0], revision=info.sha))
        snap = Path(hh.snapshot_download(ref.repo, revision=ref.revision,
                                         allow_patterns=[glob.escape(n) for n in needed]))
    except err.GatedRepoError:
        raise BadInput(f"{ref.arg}: the repo is gated: accept its terms on https://huggingface.co/{ref.repo}, "
                       f"then {LOGIN}") from None
    except err.RepositoryNotFoundError:
        raise BadInput(f"{ref.arg}: not a local path, and no such model repo on the Hugging Face Hub (check the "
                       f"name; a private repo needs a token: {LOGIN})") from None
    except err.RevisionNotFoundError:
        raise BadInput(f"{ref.arg}: the repo has no revision {ref.revision!r} (check the branch, tag or commit)") \
            from None
    except err.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        raise BadInput(f"{ref.arg}: the Hugging Face Hub answered {status or 'with an error'}"
                       f"{' (' + LOGIN + ')' if status in (401, 403) else ''}: {str(e).splitlines()[0]}") from None
    except (err.LocalEntryNotFoundError, err.OfflineModeIsEnabled) as e:
        raise BadInput(f"{ref.arg}: not in the Hugging Face cache, and the Hub cannot be reached "
                       f"({str(e).splitlines()[0]}): check the network (HF_ENDPOINT, proxies)") from None
    except Exception as e:
        if not _network_error(e):
            raise
        raise BadInput(f"{ref.arg}: not in the Hugging Face cache, and the Hub cannot be reached "
                       f"({type(e).__name__}: {e}): check the network (HF_ENDPOINT, proxies)") from None
    missing = _missing(snap, ref, needed)
    if missing:
        raise BadInput(f"{ref.arg}: the download lacks {_few(missing)} (did the revision change meanwhile? run "
                       f"again)")
    return _source(snap, ref, (files, True))


def _network_error(e: Exception) -> bool:
    """A failure to talk to the Hub (the HTTP client's own error types differ between huggingface_hub versions)."""
    return isinstance(e, (ConnectionError, TimeoutError)) or \
        type(e).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "requests", "urllib3")


def missing_hint(arg: str) -> str:
    """For a local path that does not exist but reads like a path inside a Hub repo: how to write that."""
    arg = str(arg)
    if arg.startswith((".", "/", "~", SCHEME)) or not BARE_RE.match(arg):
        return ""
    if "@" in arg:
        return " (a repo id: ORG/NAME@REVISION, a revision holding '/' percent-encoded: refs%2Fheads%2Fdev)"
    if arg.count("/") > 1:
        return f" (a path inside a Hugging Face repo is written {SCHEME}{arg})"
    return ""
