"""The empirical neural tangent kernel at initialisation, dense and masked .

For inputs ``x_1..x_N`` and a network with ``K`` outputs per sample (flattened), ``J`` is the
``NK x P`` Jacobian of the outputs with respect to the ``P`` trainable parameters and
``Theta = J J^T`` the (unnormalised) empirical NTK (Jacot et al., NeurIPS 2018). The masked network
uses ``theta * M`` for the prunable weights named in the mask and drops the pruned coordinates from
the parameter set: ``Theta_M = J_M J_M^T`` with ``J_M`` the kept columns. PX's claim is that its
mask keeps a larger share of the dense NTK than other criteria (``trace_fraction``).

Two methods, chosen by size:

* ``"exact"`` when ``N * K * P <= exact_limit``: per-sample Jacobians with ``torch.func`` (``vmap``
  over samples of ``jacrev``), built one parameter group and one sample chunk at a time, so that a
  Jacobian block holds about ``2**25`` numbers at most (or one parameter tensor's columns) and at
  most 512 sample-sized backward passes run side by side. ``Theta`` (or ``J^T J`` when ``P < NK``,
  which has the same non-zero spectrum) is formed in float64; ``torch.linalg.eigvalsh`` gives the
  spectrum and the trace is the sum of the squared Jacobian entries.
* ``"hutchinson"`` otherwise: ``tr(J J^T) = E ||J^T v||^2`` for Rademacher ``v`` over the ``NK``
  outputs (Hutchinson, 1989), one vector-Jacobian product per probe; the standard error is
  ``std / sqrt(probes)`` (sample standard deviation). The dense and masked networks see the same
  probes, so their errors are correlated and the ratio is usually steadier than either trace. The
  top eigenvalues come from Lanczos with full reorthogonalisation on the matvec
  ``u -> J (J^T u)`` (``torch.func.vjp``, then ``torch.func.jvp``), ``lanczos_steps`` steps
  (default ``4 * top + 20``, at least ``top``, at most ``NK``). Accuracy: the i-th largest Ritz
  value never exceeds the i-th largest eigenvalue (Cauchy interlacing), the largest and best
  separated converge first, and ``*_eig_residuals`` holds for each reported value the residual
  norm ``||Theta y - lambda y||``: a true eigenvalue of ``Theta`` lies within that distance
  (Bauer-Fike for symmetric matrices). With ``NK`` steps Lanczos is exact up to rounding. A cluster
  of near-equal eigenvalues (e.g. the ``K`` copies of the top one of a wide network) is resolved
  when it stands apart from the rest; an exactly repeated eigenvalue would show once.
  Cost: one forward of the whole batch is kept for the VJPs; each Lanczos step adds one VJP and one
  forward-mode JVP (several forwards' worth on CPU).

The model is run in eval mode (every module's ``training`` flag is restored afterwards) through
``torch.func.functional_call`` with substituted tensors: its parameters and buffers are never
written.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from .._scoped import frozen_state
from ..masks import Mask
from ..paths import output_tensor
from ..selection import canonical_name, unwrap

# Numbers (float32) one Jacobian block may hold; one parameter tensor's block may exceed it.
_CHUNK_ELEMENTS = 2**25
# Sample-sized backward passes run side by side under vmap (bounds activation-gradient memory).
_CHUNK_LANES = 512

Params = dict[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class NTKResult:
    """Traces and top eigenvalues of the dense and masked empirical NTK ``J J^T`` (unnormalised).

    ``*_eig_residuals``: per eigenvalue, the distance within which a true one lies (0 when exact);
    ``lanczos_steps``: ``None`` when exact."""

    dense_trace: float
    masked_trace: float
    trace_fraction: float
    dense_top_eigenvalues: list[float]
    masked_top_eigenvalues: list[float]
    n_samples: int
    n_outputs: int
    n_params_dense: int
    n_params_masked: int
    method: str
    probes: int | None
    dense_trace_stderr: float
    masked_trace_stderr: float
    dense_eig_residuals: list[float] = dataclasses.field(default_factory=list)
    masked_eig_residuals: list[float] = dataclasses.field(default_factory=list)
    lanczos_steps: int | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON types; a NaN (e.g. the fraction of a zero dense trace) becomes ``None``."""
        return {k: _json_value(v) for k, v in dataclasses.asdict(self).items()}


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


def ntk_summary(
    model: nn.Module,
    inputs: torch.Tensor,
    mask: Mapping[str, torch.Tensor] | None = None,
    *,
    exact_limit: float = 5e8,
    probes: int = 64,
    top: int = 10,
    seed: int = 0,
    lanczos_steps: int | None = None,
) -> NTKResult:
    """The empirical NTK of ``model`` on ``inputs`` (a batch ``N x ...``), dense and with ``mask``.

    ``mask`` maps canonical prunable-weight names to bool tensors (True keeps), e.g. a
    :class:`~pxprune.masks.Mask`; ``None`` reports the dense network twice (fraction 1). Exact when
    ``N * K * P <= exact_limit``, else a Hutchinson estimate with ``probes`` Rademacher probes drawn
    from ``torch.Generator().manual_seed(seed)`` and Lanczos eigenvalues (see the module docstring
    for their accuracy). ``top`` eigenvalues are returned largest first (fewer if ``NK < top``).
    """
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a tensor batch (N x ...), got {type(inputs).__name__}; "
                        "pass the images of a batch, not an (images, labels) pair")
    if inputs.dim() == 0 or inputs.shape[0] == 0 or inputs.numel() == 0:
        raise ValueError(f"the NTK needs at least one input sample; got inputs of shape "
                         f"{tuple(inputs.shape)}")
    if probes < 2:
        raise ValueError(f"probes must be at least 2 (for a standard error), got {probes}")
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    if lanczos_steps is not None and lanczos_steps < 1:
        raise ValueError(f"lanczos_steps must be positive, got {lanczos_steps}")

    net = unwrap(model)
    params: Params = {n: p.detach() for n, p in net.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no trainable parameters (requires_grad=True): "
                         "its NTK is empty")
    device = next(iter(params.values())).device
    x = inputs.detach().to(device)

    masks = _resolve_mask(net, mask, device)
    frozen = {n: p.detach() for n, p in net.named_parameters() if not p.requires_grad}
    buffers = {n: b.detach().clone() for n, b in net.named_buffers()}
    n_dense = sum(p.numel() for p in params.values())
    n_masked = n_dense - sum(int((m == 0).sum()) for n, m in masks.items() if n in params)

    with frozen_state(net, training=False), torch.enable_grad():
        def forward(p: Params, batch: torch.Tensor, use_mask: bool) -> torch.Tensor:
            tensors = {**buffers, **frozen, **p}
            if use_mask:
                for name, m in masks.items():
                    tensors[name] = tensors[name] * m
            out = output_tensor(functional_call(net, tensors, (batch,)))
            return out.reshape(out.shape[0], -1)

        with torch.no_grad():
            n_outputs = forward(params, x[:1], False).shape[1]
        n = x.shape[0]
        if n_outputs == 0:
            raise ValueError("the model returned no outputs for a sample; its NTK is empty")
        exact = n * n_outputs * n_dense <= exact_limit
        nets = [False] if mask is None else [False, True]
        stats = {}
        steps = None
        for use_mask in nets:
            if exact:
                stats[use_mask] = _exact(forward, params, x, use_mask, n_outputs, top)
            else:
                steps = min(max(lanczos_steps or 4 * top + 20, top), n * n_outputs)
                stats[use_mask] = _estimate(forward, params, x, use_mask, probes, top, steps, seed)
        if mask is None:
            stats[True] = stats[False]
            n_masked = n_dense

    (d_tr, d_se, d_eig, d_res), (m_tr, m_se, m_eig, m_res) = stats[False], stats[True]
    return NTKResult(
        dense_trace=d_tr,
        masked_trace=m_tr,
        trace_fraction=m_tr / d_tr if d_tr > 0 else float("nan"),
        dense_top_eigenvalues=d_eig,
        masked_top_eigenvalues=m_eig,
        n_samples=n,
        n_outputs=n_outputs,
        n_params_dense=n_dense,
        n_params_masked=n_masked,
        method="exact" if exact else "hutchinson",
        probes=None if exact else probes,
        dense_trace_stderr=d_se,
        masked_trace_stderr=m_se,
        dense_eig_residuals=d_res,
        masked_eig_residuals=m_res,
        lanczos_steps=steps,
    )


def _resolve_mask(net: nn.Module, mask: Mapping[str, torch.Tensor] | None,
                  device: torch.device) -> dict[str, torch.Tensor]:
    """Raw parameter name (as ``named_parameters`` spells it) -> mask in the weight's dtype."""
    if mask is None:
        return {}
    if not isinstance(mask, Mask):
        if not isinstance(mask, Mapping) or not mask:
            raise ValueError("the mask must be a non-empty mapping of parameter names to bool "
                             "tensors")
        mask = Mask(mask)
    mask.check_fits(net)  # ValueError naming the misfit
    raw = {canonical_name(n): (n, p) for n, p in net.named_parameters(remove_duplicate=False)}
    out = {}
    for name, m in mask.items():
        if name not in raw:
            raise ValueError(f"the mask does not fit the model: {name!r} is not one of its "
                             "parameters")
        raw_name, p = raw[name]
        out[raw_name] = m.to(device=device, dtype=p.dtype)
    return out


Forward = Callable[[Params, torch.Tensor, bool], torch.Tensor]
Stats = tuple[float, float, list[float], list[float]]


def _groups(params: Params, rows: int) -> list[list[str]]:
    """Consecutive parameter names whose Jacobian blocks (``rows x size``) fit
    ``_CHUNK_ELEMENTS`` (a tensor too big for it forms its own group)."""
    groups: list[list[str]] = []
    size = 0
    for name, p in params.items():
        if groups and size + rows * p.numel() <= _CHUNK_ELEMENTS:
            groups[-1].append(name)
            size += rows * p.numel()
        else:
            groups.append([name])
            size = rows * p.numel()
    return groups


def _jacobian_block(forward: Forward, params: Params, names: list[str], x: torch.Tensor,
                    use_mask: bool, k: int) -> torch.Tensor:
    """``J`` restricted to the parameters ``names``: ``NK x P_g`` (rows sample-major), float32+."""
    rest = {n: p for n, p in params.items() if n not in names}

    def one(group: Params, sample: torch.Tensor) -> torch.Tensor:
        return forward({**rest, **group}, sample.unsqueeze(0), use_mask)[0]

    group = {n: params[n] for n in names}
    width = sum(p.numel() for p in group.values())
    chunk = max(1, min(_CHUNK_ELEMENTS // max(1, k * width), _CHUNK_LANES // k))
    blocks = []
    for start in range(0, x.shape[0], chunk):
        jac = vmap(jacrev(one), in_dims=(None, 0))(group, x[start:start + chunk])
        c = x[start:start + chunk].shape[0]
        blocks.append(torch.cat([jac[n].reshape(c * k, -1) for n in names], dim=1))
    return torch.cat(blocks, dim=0)


def _exact(forward: Forward, params: Params, x: torch.Tensor, use_mask: bool, k: int,
           top: int) -> Stats:
    """Per-sample Jacobians; masked coordinates have zero columns, which ``J J^T`` ignores."""
    rows = x.shape[0] * k
    n_params = sum(p.numel() for p in params.values())
    small_gram = rows <= n_params
    gram = torch.zeros(rows, rows, dtype=torch.float64, device=x.device) if small_gram else None
    kept = []
    trace = 0.0
    for names in _groups(params, rows):
        block = _jacobian_block(forward, params, names, x, use_mask, k).to(torch.float64)
        trace += float(block.square().sum())
        if small_gram:
            gram += block @ block.T
        else:
            kept.append(block)
    if small_gram:
        eig = torch.linalg.eigvalsh(gram)
    else:
        jac = torch.cat(kept, dim=1)
        eig = torch.linalg.eigvalsh(jac.T @ jac)  # P x P: same non-zero spectrum as J J^T
    values = sorted((float(v) for v in eig.cpu()), reverse=True)
    values = (values + [0.0] * rows)[: min(top, rows)]
    return trace, 0.0, values, [0.0] * len(values)


def _estimate(forward: Forward, params: Params, x: torch.Tensor, use_mask: bool, probes: int,
              top: int, steps: int, seed: int) -> Stats:
    """Hutchinson trace and Lanczos top eigenvalues from VJPs / JVPs of the batched network."""
    def flat_out(p: Params) -> torch.Tensor:
        return forward(p, x, use_mask).reshape(-1)

    out, pullback = vjp(flat_out, params)
    rows = out.numel()
    dtype = out.dtype
    gen = torch.Generator().manual_seed(seed)

    # Probes go through the pullback in batches (vmap) whose gradients fit _CHUNK_ELEMENTS.
    n_params = sum(p.numel() for p in params.values())
    batch = max(1, min(probes, _CHUNK_ELEMENTS // max(1, n_params), _CHUNK_LANES // x.shape[0]))
    signs = torch.randint(0, 2, (probes, rows), generator=gen).to(x.device, dtype) * 2 - 1
    parts = []
    for start in range(0, probes, batch):
        (grads,) = vmap(pullback)(signs[start:start + batch])
        parts.append(sum(g.to(torch.float64).square().flatten(1).sum(1) for g in grads.values()))
    samples = torch.cat(parts).cpu()
    trace = float(samples.mean())
    stderr = float(samples.std(unbiased=True)) / math.sqrt(probes)

    def theta(u: torch.Tensor) -> torch.Tensor:
        (grads,) = pullback(u.to(dtype))
        _, tangent = jvp(flat_out, (params,), (grads,))
        return tangent.to(torch.float64)

    start = torch.randn(rows, generator=gen, dtype=torch.float64).to(x.device)
    values, residuals = _lanczos(theta, start, steps)
    n = min(top, len(values))
    return trace, stderr, values[:n], residuals[:n]


def _lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor,
             steps: int) -> tuple[list[float], list[float]]:
    """Largest-first Ritz values of a symmetric PSD operator and their residual norms."""
    basis = [start / start.norm()]
    alphas: list[float] = []
    betas: list[float] = []
    scale = 0.0
    for j in range(steps):
        w = matvec(basis[j])
        alpha = float(basis[j] @ w)
        q = torch.stack(basis, dim=1)
        for _ in range(2):  # full reorthogonalisation; twice is enough ("twice is enough", Parlett)
            w = w - q @ (q.T @ w)
        beta = float(w.norm())
        scale = max(scale, abs(alpha), beta)
        alphas.append(alpha)
        if beta <= 1e-10 * scale:  # an invariant subspace: the Ritz values are exact
            betas.append(0.0)
            break
        betas.append(beta)
        if j < steps - 1:
            basis.append(w / beta)
    m = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if m > 1:
        off = torch.tensor(betas[: m - 1], dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    ritz, vecs = torch.linalg.eigh(t)
    order = torch.argsort(ritz, descending=True)
    values = [max(float(ritz[i]), 0.0) for i in order]
    residuals = [abs(betas[-1] * float(vecs[m - 1, i])) for i in order]
    return values, residuals
