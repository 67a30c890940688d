"""Run Meta's reference Llama (llama_models.llama3.model.Transformer) over fairscale model parallelism with a
gloo group, one process per rank:

  meta_ref.py build  DIR FAMILY MP SEED        write params.json + consolidated.NN.pth from the model's state_dict
  meta_ref.py logits DIR -      MP OUT TOKENS  load DIR strictly, save the logits for TOKENS to OUT

Llama 1/2 used fairscale's ParallelEmbedding (split along dim); the llama3 code uses VocabParallelEmbedding.
"""
import json
import zlib
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist


def _setup(rank, world, init_file, params):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    import fairscale.nn.model_parallel.initialize as fs_init
    from fairscale.nn.model_parallel.layers import ParallelEmbedding
    from llama_models.llama3.args import ModelArgs
    from llama_models.llama3.model import Transformer
    fs_init.initialize_model_parallel(world)
    llama2_code = params["vocab_size"] < 128000
    if llama2_code:  # Llama 1/2's reference code: rope_theta defaulted to 1e4 (llama3's ModelArgs says 5e5)
        params = {"rope_theta": 10000.0, **params}
    args = ModelArgs(max_seq_len=64, max_batch_size=1, **params)
    model = Transformer(args)
    if llama2_code:  # ... and split the embeddings along dim
        model.tok_embeddings = ParallelEmbedding(args.vocab_size, args.dim, init_method=lambda x: x)
    return model


def _build(rank, world, init_file, out, family, seed):
    from families import is_tied, meta_params
    params = meta_params(family)
    model = _setup(rank, world, init_file, params)
    sd = model.state_dict()
    with torch.no_grad():
        for name, t in sd.items():
            # replicated tensors (norms) must be equal on every rank; split ones differ per rank
            g = torch.Generator().manual_seed(seed * 1000 + (0 if t.dim() == 1 else rank + 1) * 100 + zlib.crc32(name.encode()) % 97)
            if t.dim() == 1:
                t.copy_(1 + 0.1 * torch.randn(t.shape, generator=g))
            else:
                fan_in = t.shape[1] * (world if name.endswith(("wo.weight", "w2.weight")) else 1)
                t.copy_(torch.randn(t.shape, generator=g) / fan_in ** 0.5)
        if is_tied(family):
            sd["output.weight"].copy_(sd["tok_embeddings.weight"])
    torch.save(model.state_dict(), Path(out) / f"consolidated.{rank:02d}.pth")
    if rank == 0:
        (Path(out) / "params.json").write_text(json.dumps(params))


def _logits(rank, world, init_file, path, out, tokens):
    params = json.loads((Path(path) / "params.json").read_text())
    model = _setup(rank, world, init_file, params)
    sd = torch.load(Path(path) / f"consolidated.{rank:02d}.pth", weights_only=True)
    model.load_state_dict(sd, strict=True)
    logits = model(torch.tensor(tokens), 0)
    if rank == 0:
        torch.save(logits, out)


def _worker(rank, world, init_file, cmd, rest):
    torch.manual_seed(0)
    if cmd == "build":
        _build(rank, world, init_file, rest[0], rest[1], int(rest[3]))
    else:
        _logits(rank, world, init_file, rest[0], rest[3], json.loads(rest[4]))
    # every rank finishes together and closes gloo before exiting: a rank that exits while a peer's gloo thread still
    # talks to it was seen to abort ("terminate called without an active exception", SIGABRT)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    cmd, rest = sys.argv[1], sys.argv[2:]
    world = int(rest[2])
    with tempfile.TemporaryDirectory() as d:
        torch.multiprocessing.spawn(_worker, args=(world, f"{d}/init", cmd, rest), nprocs=world)
