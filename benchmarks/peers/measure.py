"""Measure flowkit against peer libraries and plain PyTorch on the same architectures.

Python cells for ``flowkit bench`` (each returns one row per library) and a command line::

    .venv/bin/python -m benchmarks.peers.measure --arch realnvp784 --threads 2
    .venv/bin/python -m benchmarks.peers.measure --arch glow28 --threads 2 --steps 10
    .venv/bin/python -m benchmarks.peers.measure --arch realnvp-moons --steps 3000 --threads 1

:func:`speed` times, per library and in one process: a training step (``-mean log p`` → backward
→ Adam, the Adam each library's users get: ``torch.optim.Adam`` for the peers, whose documented
loops build it, flowkit's trainer's fused Adam for flowkit), the model's share of it alone
(forward and backward, no update: ``forward_backward_ms``), density evaluation and sampling
(``torch.inference_mode`` and eval mode, or ``no_grad`` where a library needs it), each as the
median over calls interleaved round-robin across libraries (the order rotates every round,
warm-up rounds excluded), so a machine-load change hits every library alike. It also counts the
bytes of the tensors autograd saves for backward in one training step
(``torch.autograd.graph.saved_tensors_hooks``, each storage once, parameters and the input batch
excluded). Ratios are against the fastest *peer* (nflows, normflows, zuko, FrEIA; ``plain`` is
the hand-written reference). For ``realnvp784`` a pure-matmul pseudo-library runs the training
step's GEMMs (forward, grad-input and grad-weight of every conditioner layer) in the same
rotations: ``flops_fraction_of_matmul`` is that time over the training step, i.e. the step's
achieved FLOP/s (MLP FLOPs counted analytically, 3× forward) relative to what the matrix
multiplications alone reach on this machine in this run with ``torch.mm`` (what ``nn.Linear``
runs), and ``model_flops_fraction_of_matmul`` the same for the forward and backward passes alone.
A second pseudo-library runs the same GEMMs on PyTorch's oneDNN kernel (the one
:mod:`flowkit.execution.onednn_linear` uses): the ``*_onednn_matmul`` fractions are against that,
the faster of the two on some processors (an AVX-512 AMD EPYC: about 2×). flowkit's row names
the execution path each of its operations took (``paths``: what
:mod:`flowkit.execution.autotune` chose on this machine, or ``FLOWKIT_ONEDNN``'s setting) and
its Adam implementation.

:func:`equal_steps` trains every library's ``realnvp-moons`` for the same steps on the same
batches of flowkit's ``moons`` data (Adam 1e-3, cosine decay) and reports the test NLL.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor

from benchmarks.peers import (
    ARCHS,
    LIBRARIES,
    PEERS,
    Adapter,
    MissingLibrary,
    Unsupported,
    build,
)

MATMUL = "matmul"  # the pseudo-libraries of the FLOP/s references: torch.mm …
MATMUL_ONEDNN = "matmul_onednn"  # … and oneDNN's GEMM
METRICS = ("train_step_ms", "forward_backward_ms", "density_ms", "sampling_ms")


# -- building ------------------------------------------------------------------------------------
def _setup(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(int(threads))


def _base_row(library: str, arch: str) -> dict[str, Any]:
    return {"library": library, "arch": arch, "status": "ok"}


def build_all(
    arch: str, libraries: Sequence[str], seed: int
) -> tuple[dict[str, Adapter], dict[str, dict[str, Any]]]:
    """Build ``arch`` in every library; the rows of those that cannot are already final."""
    adapters: dict[str, Adapter] = {}
    rows: dict[str, dict[str, Any]] = {}
    for lib in libraries:
        row = _base_row(lib, arch)
        rows[lib] = row
        try:
            adapters[lib] = build(lib, arch, seed=seed)
        except MissingLibrary as exc:
            row["status"] = f"skipped: {exc}"
        except Unsupported as exc:
            row["status"] = f"unsupported: {exc}"
        except Exception as exc:  # a broken adapter must not lose the other rows
            row["status"] = f"failed: {type(exc).__name__}: {exc}"
        else:
            row["num_parameters"] = adapters[lib].num_parameters
            if adapters[lib].note:
                row["note"] = adapters[lib].note
    return adapters, rows


def _data(arch: str, batch: int, seed: int) -> Tensor:
    """A fixed synthetic batch: centred uniform pixels for images, N(0, 1/4) for vectors."""
    gen = torch.Generator().manual_seed(seed + 1)
    shape = ARCHS[arch].shape
    if len(shape) == 3:
        return torch.rand(batch, *shape, generator=gen) - 0.5
    return 0.5 * torch.randn(batch, *shape, generator=gen)


# -- timing --------------------------------------------------------------------------------------
def _train_step(adapter: Adapter, opt: torch.optim.Optimizer, x: Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss = -adapter.log_prob(x).mean()
    loss.backward()
    opt.step()


def _forward_backward(adapter: Adapter, x: Tensor) -> None:
    """The model's share of a training step: ``-mean log p`` and its backward, no update."""
    for p in adapter.parameters():
        p.grad = None
    (-adapter.log_prob(x).mean()).backward()


def _inference_context(adapter: Adapter, probe: Callable[[], Any]) -> Callable[[], Any]:
    """``torch.inference_mode`` if the library works under it, else ``torch.no_grad``."""
    try:
        with torch.inference_mode():
            probe()
        return torch.inference_mode
    except RuntimeError:
        return torch.no_grad


def _round_robin(
    tasks: dict[str, Callable[[], Any]], rounds: int, warmup: int, rows: dict[str, dict[str, Any]], key: str
) -> None:
    """Time every task ``rounds`` times, interleaved, the order rotating each round; write the
    median (ms) of the rounds after ``warmup`` into ``rows[name][key]``. A task that raises is
    marked failed and dropped."""
    names = list(tasks)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        order = names[r % len(names) :] + names[: r % len(names)] if names else []
        for name in order:
            if name not in tasks:
                continue
            t0 = time.perf_counter()
            try:
                tasks[name]()
            except Exception as exc:
                rows[name]["status"] = f"failed: {key}: {type(exc).__name__}: {exc}"
                del tasks[name]
                continue
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    for name in tasks:
        if times[name]:
            rows[name][key] = round(1000 * statistics.median(times[name]), 3)


def saved_activation_bytes(adapter: Adapter, x: Tensor) -> int:
    """Bytes of the tensors saved for backward by one training forward (each storage once).

    Parameters, buffers and the input batch are not activations and are left out.
    """
    excluded = {
        t.untyped_storage().data_ptr() for t in (*adapter.module.parameters(), *adapter.module.buffers(), x)
    }
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return t
        ptr = storage.data_ptr()
        if ptr and ptr not in excluded:
            seen[ptr] = storage.nbytes()
        return t

    def unpack(t: Tensor) -> Tensor:
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        loss = -adapter.log_prob(x).mean()
    loss.backward()
    return sum(seen.values())


# -- the FLOP/s reference ----------------------------------------------------------------------
def mlp_layer_shapes(arch: str) -> list[tuple[int, int]]:
    """``(in, out)`` of every conditioner layer of a Real NVP architecture."""
    spec = ARCHS[arch]
    features = spec.shape[0]
    first = math.ceil(features / 2)
    shapes = []
    for k in range(spec.layers):
        n_a, n_b = (first, features - first) if k % 2 == 0 else (features - first, first)
        shapes += [(n_a, spec.hidden), (spec.hidden, spec.hidden), (spec.hidden, 2 * n_b)]
    return shapes


def training_flops(arch: str, batch: int) -> int:
    """FLOPs of the conditioner MLPs in one training step: 3 × the forward ``2·B·in·out``."""
    return 3 * sum(2 * batch * n_in * n_out for n_in, n_out in mlp_layer_shapes(arch))


class MatmulReference:
    """The training step's GEMMs alone: forward, grad-input and grad-weight of every layer.

    ``backend="mm"`` runs them with ``torch.mm`` (MKL on x86: what ``nn.Linear`` uses);
    ``backend="onednn"`` with the oneDNN kernel that :mod:`flowkit.execution.onednn_linear` uses,
    the faster of the two on some processors, so the fraction against it says how close a library comes to
    the best GEMM rate PyTorch reaches here.
    """

    def __init__(self, arch: str, batch: int, backend: str = "mm") -> None:
        if backend not in ("mm", "onednn"):
            raise ValueError(f"backend must be 'mm' or 'onednn', got {backend!r}")
        gen = torch.Generator().manual_seed(0)
        self.backend = backend
        self.operands = []
        for n_in, n_out in mlp_layer_shapes(arch):
            x = torch.randn(batch, n_in, generator=gen)
            w = torch.randn(n_out, n_in, generator=gen)
            g = torch.randn(batch, n_out, generator=gen)
            self.operands.append((x, w, g))

    def __call__(self) -> None:
        """Run every GEMM once."""
        if self.backend == "onednn":
            gemm = torch.ops.mkldnn._linear_pointwise
            for x, w, g in self.operands:
                gemm(x, w, None, "none", [], "")
                gemm(g, w.t(), None, "none", [], "")
                gemm(g.t(), x.t(), None, "none", [], "")
            return
        for x, w, g in self.operands:
            torch.mm(x, w.T)
            torch.mm(g, w)
            torch.mm(g.T, x)


def _references(arch: str, batch: int) -> dict[str, MatmulReference]:
    """The GEMM references of a Real NVP architecture (oneDNN where PyTorch has it)."""
    from flowkit.execution.onednn_linear import onednn_linear_active

    refs = {MATMUL: MatmulReference(arch, batch)}
    if onednn_linear_active():
        refs[MATMUL_ONEDNN] = MatmulReference(arch, batch, backend="onednn")
    return refs


# -- the cells -----------------------------------------------------------------------------------
def _libraries(libraries: Sequence[str] | None) -> list[str]:
    chosen = list(LIBRARIES if libraries is None else libraries)
    unknown = [lib for lib in chosen if lib not in LIBRARIES]
    if unknown:
        raise ValueError(f"unknown libraries {unknown}; choose from {', '.join(LIBRARIES)}")
    return chosen


def _finish(rows: dict[str, dict[str, Any]], setup: dict[str, Any]) -> list[dict[str, Any]]:
    """Add the ratios against the fastest peer and the run's setup to every row."""
    for key in METRICS:
        peers = {lib: r[key] for lib, r in rows.items() if lib in PEERS and key in r}
        if not peers:
            continue
        fastest = min(peers, key=peers.__getitem__)
        short = key.removesuffix("_ms").replace("train_step", "step").replace("forward_backward", "fb")
        for row in rows.values():
            if key in row:
                row[f"{short}_ratio_vs_fastest_peer"] = round(row[key] / peers[fastest], 3)
                row[f"fastest_peer_{short}"] = fastest
    return [{**row, **setup} for row in rows.values()]


def _setup_info(**extra: Any) -> dict[str, Any]:
    return {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_avg_1min": round(os.getloadavg()[0], 2),
        **extra,
    }


def speed(
    arch: str = "realnvp784",
    libraries: Sequence[str] | None = None,
    steps: int = 20,
    repeats: int = 10,
    warmup: int = 3,
    threads: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    lr: float = 1e-4,
) -> list[dict[str, Any]]:
    """Training-step, density and sampling times, saved activations and parameter counts.

    One row per library (see the module docstring for how each number is taken); libraries
    that are missing or cannot express ``arch`` get a row whose ``status`` says so.
    """
    _setup(threads)
    libs = _libraries(libraries)
    batch = batch_size or ARCHS[arch].batch_size
    adapters, rows = build_all(arch, libs, seed)
    x = _data(arch, batch, seed)
    optimizers = {lib: a.optimizer(lr) for lib, a in adapters.items()}
    for a in adapters.values():
        a.train()
    tasks: dict[str, Callable[[], Any]] = {
        lib: (lambda a=a, o=optimizers[lib]: _train_step(a, o, x)) for lib, a in adapters.items()
    }
    refs = _references(arch, batch) if arch in ("realnvp784", "realnvp-moons") else {}
    for name, ref in refs.items():
        tasks[name] = ref
        rows[name] = _base_row(name, arch)
    _round_robin(tasks, steps, warmup, rows, "train_step_ms")
    tasks = {
        lib: (lambda a=a: _forward_backward(a, x))
        for lib, a in adapters.items()
        if rows[lib]["status"] == "ok"
    }
    tasks.update(refs)
    _round_robin(tasks, steps, warmup, rows, "forward_backward_ms")
    # a reference's time is its faster run: it does the same work in both rounds
    matmul = {
        name: min(rows[name].get(k, math.inf) for k in ("train_step_ms", "forward_backward_ms"))
        for name in refs
    }
    for name in refs:
        rows.pop(name)
    ok = {lib: a for lib, a in adapters.items() if rows[lib]["status"] == "ok"}
    for lib, a in ok.items():
        try:
            rows[lib]["saved_activation_mib"] = round(saved_activation_bytes(a, x) / 2**20, 3)
        except Exception as exc:
            rows[lib]["saved_activation_note"] = f"{type(exc).__name__}: {exc}"
        a.train(False)
    for key, make in (
        ("density_ms", lambda a: lambda: a.log_prob(x)),
        ("sampling_ms", lambda a: lambda: a.sample(batch)),
    ):
        tasks = {}
        for lib, a in ok.items():
            fn = make(a)
            context = _inference_context(a, fn)
            tasks[lib] = lambda fn=fn, context=context: _call_in(context, fn)
        _round_robin(tasks, repeats, 1, rows, key)
    if "flowkit" in ok:
        rows["flowkit"]["paths"] = _flowkit_paths(optimizers["flowkit"])
    if matmul:
        flops = training_flops(arch, batch)
        for name, ref_ms in matmul.items():
            suffix = "" if name == MATMUL else "_onednn"
            for lib in ok:
                step = rows[lib].get("train_step_ms")
                model = rows[lib].get("forward_backward_ms")
                if step:
                    rows[lib][f"flops_fraction_of{suffix}_matmul"] = round(ref_ms / step, 3)
                    rows[lib]["achieved_gflops"] = round(flops / step / 1e6, 2)
                if model:
                    rows[lib][f"model_flops_fraction_of{suffix}_matmul"] = round(ref_ms / model, 3)
                rows[lib][f"{name}_gflops"] = round(flops / ref_ms / 1e6, 2)
    return _finish(
        rows, _setup_info(batch_size=batch, steps=steps, repeats=repeats, warmup=warmup, seed=seed)
    )


def _flowkit_paths(optimizer: torch.optim.Optimizer) -> str:
    """The execution paths flowkit's model took in this process (the autotune's choices, or the
    ``FLOWKIT_ONEDNN`` setting) and its optimiser's implementation."""
    from flowkit.execution.autotune import paths_text
    from flowkit.optim import implementation_of

    return f"{paths_text()}; adam: {implementation_of(optimizer)}"


def _call_in(context: Callable[[], AbstractContextManager[Any]], fn: Callable[[], Any]) -> Any:
    with context():
        return fn()


def equal_steps(
    arch: str = "realnvp-moons",
    libraries: Sequence[str] | None = None,
    steps: int = 3000,
    threads: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    lr: float = 1e-3,
) -> list[dict[str, Any]]:
    """Train every library for the same steps on the same moons batches; report the test NLL.

    Adam (``lr``) with cosine decay over ``steps``; one batch per step shared by all libraries,
    the order of the libraries rotating every step. ``train_step_ms`` is the median step time.
    """
    import flowkit
    from flowkit.runs import load_dataset

    if arch != "realnvp-moons":
        raise ValueError(f"equal_steps trains on two moons: arch must be 'realnvp-moons', got {arch!r}")
    _setup(threads)
    libs = _libraries(libraries)
    batch = batch_size or ARCHS[arch].batch_size
    data = load_dataset(flowkit.load_config("realnvp-moons", [f"train.seed={seed}"]))
    adapters, rows = build_all(arch, libs, seed)
    optimizers = {lib: a.optimizer(lr) for lib, a in adapters.items()}
    schedulers = {lib: torch.optim.lr_scheduler.CosineAnnealingLR(o, steps) for lib, o in optimizers.items()}
    gen = torch.Generator().manual_seed(seed)
    n = data.train.shape[0]
    times: dict[str, list[float]] = {lib: [] for lib in adapters}
    names = list(adapters)
    for step in range(steps):
        x = data.train[torch.randint(0, n, (batch,), generator=gen)]
        for lib in names[step % len(names) :] + names[: step % len(names)]:
            if rows[lib]["status"] != "ok":
                continue
            t0 = time.perf_counter()
            try:
                _train_step(adapters[lib], optimizers[lib], x)
            except Exception as exc:
                rows[lib]["status"] = f"failed: training: {type(exc).__name__}: {exc}"
                continue
            schedulers[lib].step()
            times[lib].append(time.perf_counter() - t0)
    for lib, a in adapters.items():
        if rows[lib]["status"] != "ok":
            continue
        a.train(False)
        with torch.no_grad():
            log_p = torch.cat([a.log_prob(chunk) for chunk in data.test.split(1000)])
        rows[lib]["test_nll"] = round(float(-log_p.mean()), 4)
        rows[lib]["train_step_ms"] = round(1000 * statistics.median(times[lib][5:] or times[lib]), 3)
    return _finish(rows, _setup_info(batch_size=batch, steps=steps, seed=seed, lr=lr))


def realnvp784(**params: Any) -> list[dict[str, Any]]:
    """:func:`speed` on ``realnvp784`` (a ``flowkit bench`` Python cell)."""
    return speed(**{**params, "arch": "realnvp784"})


def glow28(**params: Any) -> list[dict[str, Any]]:
    """:func:`speed` on ``glow28`` (a ``flowkit bench`` Python cell)."""
    return speed(**{**params, "arch": "glow28"})


def realnvp_moons(**params: Any) -> list[dict[str, Any]]:
    """:func:`equal_steps` on ``realnvp-moons`` (a ``flowkit bench`` Python cell)."""
    return equal_steps(**{**params, "arch": "realnvp-moons"})


# -- command line --------------------------------------------------------------------------------
COLUMNS = (
    "library",
    "status",
    "num_parameters",
    "train_step_ms",
    "step_ratio_vs_fastest_peer",
    "forward_backward_ms",
    "fb_ratio_vs_fastest_peer",
    "density_ms",
    "density_ratio_vs_fastest_peer",
    "sampling_ms",
    "sampling_ratio_vs_fastest_peer",
    "saved_activation_mib",
    "flops_fraction_of_matmul",
    "model_flops_fraction_of_matmul",
    "flops_fraction_of_onednn_matmul",
    "model_flops_fraction_of_onednn_matmul",
    "test_nll",
)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the columns any row has."""
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    cells = [
        [str(r.get(c, "")) if c != "status" or r.get(c) == "ok" else str(r[c])[:60] for c in cols]
        for r in rows
    ]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.peers.measure``: run one architecture and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=list(ARCHS), default="realnvp784")
    parser.add_argument("--libraries", nargs="+", choices=list(LIBRARIES), default=None)
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed training steps (speed; default 20) or training steps (realnvp-moons; default 3000)",
    )
    parser.add_argument("--repeats", type=int, default=10, help="timed density/sampling calls")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--speed", action="store_true", help="time realnvp-moons instead of training it to a test NLL"
    )
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    if args.arch == "realnvp-moons" and not args.speed:
        rows = equal_steps(
            libraries=args.libraries, steps=args.steps or 3000, threads=args.threads, seed=args.seed
        )
    else:
        rows = speed(
            args.arch,
            args.libraries,
            steps=args.steps or 20,
            repeats=args.repeats,
            warmup=args.warmup,
            threads=args.threads,
            seed=args.seed,
        )
    print(format_table(rows))
    setup = {k: rows[0][k] for k in ("threads", "torch", "load_avg_1min") if rows and k in rows[0]}
    print(json.dumps(setup))
    for row in rows:
        if row.get("note"):
            print(f"{row['library']}: {row['note']}")
        if row.get("paths"):
            print(f"{row['library']} execution paths: {row['paths']}")
    from flowkit.bench.report import machine_info, machine_line

    print(f"machine: {machine_line(machine_info())}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
