"""The per-tensor log on stdout (llama.cpp's converter format), a summary line, and a tqdm bar on stderr."""
import sys
import time

from tqdm import tqdm


def format_shape(shape) -> str:
    return " x ".join(str(d) for d in shape)


class TensorLog:
    def __init__(self, n_tensors: int, total_bytes: int, quiet: bool = False, out=None):
        self.n, self.quiet, self.out = n_tensors, quiet, out or sys.stdout
        self.i = 0
        self.bytes_in = self.bytes_out = 0
        self.t0 = time.perf_counter()
        # The bar counts input bytes; it appears only when a run lasts long enough to need one.
        self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, file=sys.stderr, delay=2.0,
                        disable=quiet or not sys.stderr.isatty(), leave=False, desc="converting")

    def tensor(self, name: str, shape, type_name: str, bytes_in: int, bytes_out: int, note: str = ""):
        """One line per tensor written; `note` adds fields (" | rel rms err 0.41%") after the type."""
        self.i += 1
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out
        if not self.quiet:
            width = len(str(self.n))
            line = (f"[{self.i:{width}d}/{self.n}] Writing tensor {name} | size {format_shape(shape)} | "
                    f"type {type_name}{note}")
            if self.bar.disable:
                print(line, file=self.out)
            else:
                tqdm.write(line, file=self.out)  # keeps the bar below the log lines
            self.bar.update(bytes_in)

    def finish(self, dst) -> float:
        self.bar.close()
        secs = time.perf_counter() - self.t0
        if not self.quiet:
            rate = self.bytes_out / secs / 1e9 if secs > 0 else float("inf")
            print(f"Wrote {self.i} tensors to {dst}: {self.bytes_in / 1e9:.3f} GB in, {self.bytes_out / 1e9:.3f} GB out, "
                  f"{secs:.2f} s, {rate:.2f} GB/s", file=self.out, flush=True)
        return secs


def warn(message: str):
    """Something the user should know that does not stop the run (printed even with -q)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
