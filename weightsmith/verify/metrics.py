"""The statistics `llama-perplexity --kl-divergence` prints, from reference and candidate logits.

Per scored token: KL(reference || candidate) over the whole vocabulary, both models' negative log-likelihood of
the actual next token, the change in that token's probability (candidate - reference), and whether the argmax
agrees. Uncertainties and percentiles follow llama.cpp's formulas (mean_and_uncertainty, linear-interpolated
percentile), so the numbers can be put side by side. Unlike llama.cpp the reference log-probabilities are not
stored as 16-bit values, so the KLD here is exact up to float64 rounding.
"""
import math
from dataclasses import dataclass, field

import torch


@dataclass
class Accumulator:
    kld: list = field(default_factory=list)
    nll_ref: list = field(default_factory=list)
    nll_cand: list = field(default_factory=list)
    p_diff: list = field(default_factory=list)
    same_top: list = field(default_factory=list)
    max_abs_logit_diff: float = 0.0

    def add(self, ref: torch.Tensor, cand: torch.Tensor, targets: torch.Tensor, rows: int = 64):
        """ref/cand [n, vocab] logits at the scored positions, targets [n] the tokens they predict."""
        for s in range(0, ref.shape[0], rows):
            r, c, t = ref[s:s + rows].double(), cand[s:s + rows].double(), targets[s:s + rows].to(ref.device)
            lr, lc = r.log_softmax(-1), c.log_softmax(-1)
            self.kld.append((lr.exp() * (lr - lc)).sum(-1).cpu())
            nr, nc = -lr.gather(-1, t[:, None])[:, 0], -lc.gather(-1, t[:, None])[:, 0]
            self.nll_ref.append(nr.cpu())
            self.nll_cand.append(nc.cpu())
            self.p_diff.append((torch.exp(-nc) - torch.exp(-nr)).cpu())
            self.same_top.append((r.argmax(-1) == c.argmax(-1)).cpu())
            self.max_abs_logit_diff = max(self.max_abs_logit_diff, (r - c).abs().max().item())

    def result(self) -> dict:
        kld, nr, nc = torch.cat(self.kld), torch.cat(self.nll_ref), torch.cat(self.nll_cand)
        dp, top = torch.cat(self.p_diff), torch.cat(self.same_top).double()
        n = kld.numel()
        kld_mean, kld_unc = mean_and_uncertainty(kld)
        lq, lq_unc = mean_and_uncertainty(nc)
        lb, lb_unc = mean_and_uncertainty(nr)
        cov = ((nc * nr).mean().item() - lq * lb) / (n - 1) if n >= 10 else 0.0
        ratio_unc = math.sqrt(max(lq_unc ** 2 + lb_unc ** 2 - 2 * cov, 0.0))
        mse, mse_unc = mean_and_uncertainty(dp * dp)
        rms = math.sqrt(mse)
        top1 = top.mean().item()
        return {
            "n_tokens": n,
            "mean_kld": kld_mean, "mean_kld_unc": kld_unc,
            "max_kld": kld.max().item(), "kld_p999": percentile(kld, 0.999), "kld_p99": percentile(kld, 0.99),
            "kld_median": percentile(kld, 0.5),
            "top1_agreement": top1, "top1_agreement_unc": math.sqrt(top1 * (1 - top1) / (n - 1)) if n > 1 else 0.0,
            "rms_dp": rms, "rms_dp_unc": 0.5 / rms * mse_unc if rms else 0.0,
            "mean_dp": dp.mean().item(),
            "ppl_reference": math.exp(lb), "ppl_reference_unc": math.exp(lb) * lb_unc,
            "ppl_candidate": math.exp(lq), "ppl_candidate_unc": math.exp(lq) * lq_unc,
            "ppl_ratio": math.exp(lq - lb), "ppl_ratio_unc": math.exp(lq - lb) * ratio_unc,
            "max_abs_logit_diff": self.max_abs_logit_diff,
        }


def mean_and_uncertainty(x: torch.Tensor) -> tuple[float, float]:
    """Mean and its standard error, as llama.cpp computes it (0 for ten values or fewer)."""
    n = x.numel()
    if n < 1:
        return 0.0, 0.0
    m = x.mean().item()
    var = (x * x).mean().item() - m * m
    return m, math.sqrt(var / (n - 1)) if var > 0 and n > 10 else 0.0


def percentile(x: torch.Tensor, fraction: float) -> float:
    """Linear interpolation between sorted values at fraction*(n-1); the median for 0.5."""
    v = x.sort().values
    p = fraction * (v.numel() - 1)
    i = int(p)
    j = min(i + 1, v.numel() - 1)
    return ((1 - (p - i)) * v[i] + (p - i) * v[j]).item()


def render(r: dict) -> str:
    """llama-perplexity's summary, in its order and units."""
    lines = [
        f"tokens scored               : {r['n_tokens']}",
        f"Mean PPL(Q)                 : {r['ppl_candidate']:10.6f} ± {r['ppl_candidate_unc']:10.6f}",
        f"Mean PPL(base)              : {r['ppl_reference']:10.6f} ± {r['ppl_reference_unc']:10.6f}",
        f"Mean PPL(Q)/PPL(base)       : {r['ppl_ratio']:10.6f} ± {r['ppl_ratio_unc']:10.6f}",
        f"Mean    KLD: {r['mean_kld']:10.6f} ± {r['mean_kld_unc']:10.6f}",
        f"Maximum KLD: {r['max_kld']:10.6f}",
        f"99.9%   KLD: {r['kld_p999']:10.6f}",
        f"99.0%   KLD: {r['kld_p99']:10.6f}",
        f"Median  KLD: {r['kld_median']:10.6f}",
        f"RMS Δp    : {100 * r['rms_dp']:6.3f} ± {100 * r['rms_dp_unc']:5.3f} %",
        f"Same top p: {100 * r['top1_agreement']:6.3f} ± {100 * r['top1_agreement_unc']:5.3f} %",
        f"max |Δlogit|: {r['max_abs_logit_diff']:.6g}",
        "per-layer drift (relative error of the hidden state after each block):",
    ]
    lines += [f"  layer {d['layer']:3d}: {d['rel_err']:.3e}" for d in r["layers"]]
    return "\n".join(lines)
