"""inspect: what is inside a checkpoint, from headers only."""
from . import formats
from .checkpoint import Checkpoint
from .convert.log import format_shape


def report(path) -> dict:
    ck = formats.open_checkpoint(path)
    return as_dict(ck)


def as_dict(ck: Checkpoint) -> dict:
    d = {
        "format": ck.format,
        "config": ck.config.summary(),
        "tensors": [{"name": t.name, "canonical": t.canonical, "shape": list(t.shape), "dtype": t.dtype,
                     "nbytes": t.nbytes} for t in ck.tensors],
        "n_params": ck.n_params,
        "nbytes": ck.nbytes,
        "tokenizer_files": sorted(ck.tokenizer_files),
    }
    d.update(ck.info)
    return d


def render(d: dict) -> str:
    lines = [f"format: {d['format']}"]
    for k in ("files", "model_parallel"):
        if k in d:
            lines.append(f"{k}: {d[k]}")
    if "checklist" in d:
        lines.append(f"checklist.chk: {len(d['checklist'])} files listed (md5s checked before converting; "
                     f"--no-check skips)")
    lines.append(f"tokenizer files: {', '.join(d['tokenizer_files']) or 'none'}")
    lines += [f"also: {a}" for a in d.get("also", ())]  # the other form a repo directory holds
    if "metadata" in d:
        lines.append("metadata:")
        lines += [f"  {k}: {v}" for k, v in d["metadata"].items()]
    lines.append("config:")
    lines += [f"  {k}: {v}" for k, v in d["config"].items() if v is not None]
    rows = [(t["name"], t["canonical"], format_shape(t["shape"]), t["dtype"], f"{t['nbytes']:,}") for t in d["tensors"]]
    head = ("name", "canonical", "shape", "dtype", "bytes")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    fmt = "  ".join(f"{{:{'>' if i == 4 else '<'}{w}}}" for i, w in enumerate(widths))
    lines.append(fmt.format(*head))
    lines += [fmt.format(*r) for r in rows]
    lines.append(f"{len(rows)} tensors, {d['n_params']:,} parameters, {d['nbytes']:,} bytes "
                 f"({d['nbytes'] / 1e9:.3f} GB)")
    return "\n".join(lines)
