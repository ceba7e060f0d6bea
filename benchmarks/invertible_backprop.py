"""Peak training memory and step time: autograd vs per-block checkpointing vs invertible backprop.

The model: a squeeze ``3×32×32 → 12×16×16`` then 32 additive couplings (checkerboard masks of
alternating parity, residual conv conditioners with 64 hidden channels and 2 residual blocks),
all built from flowkit's plugins; batch 64; loss ``½‖z‖²/B − mean log-det`` (a Gaussian NLL); one
training step is zero-grad, forward, backward and an Adam update. The weights are perturbed off
their identity initialisation. Three variants train the same model:

``autograd``
    the plain stack: every block's activations are stored.
``checkpoint``
    every block under ``torch.utils.checkpoint.checkpoint`` (non-reentrant): only block inputs
    are stored, and each block's forward runs again during backward.
``invertible``
    :class:`flowkit.execution.invertible_backprop.InvertibleBackprop` (``train.invertible_backprop``) as
    it comes: only the output is stored; inputs are reconstructed by inversion during backward,
    each block on two halves of the batch in turn (``chunks=2``).
``invertible-c1``
    the same with ``chunks=1``: each block is reconstructed on the whole batch at once.
``memcnn``
    the peer: every coupling wrapped in MemCNN's ``InvertibleModuleWrapper`` (van de Leemput et
    al. 2019; ``keep_input=False``, its memory-saving setting), measured only when ``memcnn`` is
    installed (``pip install --no-deps memcnn``: its wrapper needs only torch and numpy, while its
    declared requirements pull torchvision). Its adapter returns the couplings' outputs; their
    log-determinants are zero (additive couplings), so the loss is the same.

Any method that keeps no activations runs every block's forward once more than autograd does.
The script times the stack's forward without a graph in the same rounds and reports the naive
estimate of such a method's cost, ``autograd+fwd = (autograd step + that forward) / autograd
step``. A memory-free step can come in under it: its backward reads activations it has just
recomputed (a block's local graph, which stays in cache) instead of activations stored during
the forward pass and fetched back from main memory, as autograd's backward does.

Memory is measured for every variant in a fresh Python subprocess (nothing left over from
another variant), after one warm-up step (so the Adam state and allocator pools exist). Peak
memory is the memory of the step itself, above what is resident before it:

* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus
  ``memory_allocated()`` before the step.
* CPU, ``tensor_peak`` (the headline number): a ``TorchDispatchMode`` sees every tensor every
  operator creates (backward included), keeps a weak reference to each new storage, and after
  every operator adds up the current sizes of the storages still alive (so storages that are
  freed, or emptied in place with ``resize_(0)`` as MemCNN does, stop counting); it reports the
  peak of that sum. It is exact and deterministic, but misses scratch memory operators
  allocate internally (e.g. convolution workspaces), which all variants share.
* CPU, ``rss_peak`` (a cross-check): the process's peak resident set (``VmHWM``) during the
  step minus its resident set before it, with the peak reset through ``/proc/self/clear_refs``
  and ``MALLOC_MMAP_THRESHOLD_=65536`` so that large blocks go back to the system when freed
  (that setting slows allocation down, so the timing process runs without it). It includes
  everything (workspaces, allocator slack) and is noisier.

The memory is that of zero-grad, forward and backward (activations and gradient buffers); the
Adam update, which is the same for every variant, is left out of it but not out of the time.
Step time is measured in one more subprocess, without the tracker: after a warm-up step of each,
the variants take turns for ``--repeats`` rounds (so that a change of load on the machine hits
them alike), and the median full step is reported as wall-clock time and as the process's CPU
time (``time.process_time``: with ``--threads 1`` the compute a step costs, less sensitive to
other processes competing for the cores). Ratios are against ``autograd`` from the same run.
The ``faults`` column is the median number of minor page faults a step takes (first touches
of memory the C allocator has just obtained from the OS, about a microsecond each): a step whose
buffers the allocator has handed back to the OS pays them again, so this column shows when a
time difference comes from the allocator rather than the arithmetic. Timings on a shared machine
are noisy; run on a quiet one::

    .venv/bin/python benchmarks/invertible_backprop.py                 # defaults as above
    .venv/bin/python benchmarks/invertible_backprop.py --device cuda --repeats 20
    .venv/bin/python benchmarks/invertible_backprop.py --batch 16 --blocks 8   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from flowkit import registry
from flowkit.composition import Sequential
from flowkit.execution.invertible_backprop import InvertibleBackprop
from flowkit.execution.onednn_linear import onednn_mode, set_onednn_linear
from flowkit.transform import Transform

#: ``invertible-c1`` is ``InvertibleBackprop(stack, chunks=1)`` (the default is 2); ``memcnn``
#: runs only when MemCNN is installed
VARIANTS = ("autograd", "checkpoint", "invertible", "invertible-c1", "memcnn")
#: the stack's forward pass without a graph, timed with the variants (for the ``autograd+fwd`` estimate)
FORWARD = "forward-no-graph"
#: the stack's widest convolution alone (same shapes, channels-last, no graph): the kernel's rate
REFERENCE = "reference-conv"


# -- the model ---------------------------------------------------------------------------------
def build_stack(blocks: int, hidden: int, num_blocks: int, seed: int) -> Sequential:
    """Squeeze 3×32×32 → 12×16×16, then ``blocks`` additive couplings, from flowkit's plugins."""
    torch.manual_seed(seed)
    squeeze = registry.transforms.build("squeeze", {}, injected={"event_shape": (3, 32, 32)})
    steps: list[Transform] = [squeeze]
    for k in range(blocks):
        steps.append(
            registry.transforms.build(
                "additive-coupling",
                {
                    "mask": "checkerboard",
                    "parity": bool(k % 2),
                    "conditioner": "conv",
                    "hidden": hidden,
                    "num_blocks": num_blocks,
                },
                injected={"event_shape": squeeze.output_shape},
            )
        )
    stack = Sequential(steps)
    with torch.no_grad():  # off the identity initialisation, without blowing the stack up
        for p in stack.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return stack


class Checkpointed(nn.Module):
    """Every step of a sequence under non-reentrant activation checkpointing."""

    def __init__(self, stack: Sequential) -> None:
        super().__init__()
        self.stack = stack

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(x.shape[0])
        for step in self.stack:
            x, logdet = torch.utils.checkpoint.checkpoint(step, x, None, use_reentrant=False)
            total = total + logdet
        return x, total


class MemCNNStack(nn.Module):
    """The stack with every coupling in MemCNN's ``InvertibleModuleWrapper`` (the peer).

    MemCNN wraps modules with a single-tensor ``forward``/``inverse``; :class:`_MemCNNAdapter`
    gives a coupling that form. With ``keep_input=False`` MemCNN frees each wrapper's input
    storage after the forward pass, so the squeeze's output is copied first (it may share the
    caller's batch, which must survive the step).
    """

    def __init__(self, stack: Sequential) -> None:
        super().__init__()
        memcnn = _import_memcnn()
        steps = list(stack.steps)
        self.squeeze = steps[0]
        self.blocks = nn.Sequential(
            *(
                memcnn.InvertibleModuleWrapper(_MemCNNAdapter(b), keep_input=False, keep_input_inverse=False)
                for b in steps[1:]
            )
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h, _ = self.squeeze(x)
        z = self.blocks(h.clone())
        return z, z.new_zeros(z.shape[0])  # additive couplings: log-determinant 0


class _MemCNNAdapter(nn.Module):
    """A flowkit block as MemCNN expects it: ``forward(x) -> y`` and ``inverse(y) -> x``."""

    def __init__(self, block: Transform) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        return _own_storage(self.block(x)[0])

    def inverse(self, y: Tensor) -> Tensor:
        return _own_storage(self.block.inverse(y)[0])


def _own_storage(t: Tensor) -> Tensor:
    """``t``, copied when it is a view: MemCNN detaches its outputs in place (``detach_``), which
    torch refuses for views (a coupling's output is a reshaped view of its joined halves). One copy
    of a block's output (786 KB here) against the block's convolutions: negligible."""
    return t.clone() if t._base is not None else t


def _import_memcnn() -> Any:
    """The ``memcnn`` module (its deprecated ``torch.cuda.amp`` decorators warn on import)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import memcnn
    return memcnn


def available_variants() -> tuple[str, ...]:
    """:data:`VARIANTS`, without ``memcnn`` when MemCNN is not installed."""
    try:
        _import_memcnn()
    except ImportError:
        return tuple(v for v in VARIANTS if v != "memcnn")
    return VARIANTS


def build_variant(variant: str, stack: Sequential) -> nn.Module:
    """The module a variant trains (all share ``stack``'s parameters)."""
    if variant == "autograd":
        return stack
    if variant == "checkpoint":
        return Checkpointed(stack)
    if variant == "memcnn":
        return MemCNNStack(stack)
    if variant == "invertible-c1":
        return InvertibleBackprop(stack, chunks=1)
    return InvertibleBackprop(stack)


# -- memory measurement --------------------------------------------------------------------------
class TensorPeak(TorchDispatchMode):
    """Peak bytes of the live storages of tensors created while the mode is active.

    After every operator the current sizes of the storages still alive are added up, so a
    storage stops counting when it is freed or emptied in place (``resize_(0)``, which MemCNN
    uses to drop activations) and counts again when it is refilled. Storages of ``existing``
    tensors (the parameters, the input batch) are never counted, even when an operator returns
    a view or an alias of them.
    """

    def __init__(self, existing: Iterable[Tensor] = ()) -> None:
        super().__init__()
        self.peak = 0
        self._storages: dict[int, weakref.ref[Any]] = {}
        self._existing = [t.untyped_storage() for t in existing]  # kept alive: ids stay valid
        self._skip = {id(st) for st in self._existing}

    def live(self) -> int:
        """Bytes held now by the storages created under the mode."""
        total = 0
        for key, ref in list(self._storages.items()):
            storage = ref()
            if storage is None:
                del self._storages[key]
            else:
                total += storage.nbytes()
        return total

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                storage = t.untyped_storage()
                key = id(storage)
                if key in self._skip:
                    continue
                known = self._storages.get(key)
                if known is None or known() is not storage:
                    self._storages[key] = weakref.ref(storage)
        self.peak = max(self.peak, self.live())
        return out


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _minor_faults() -> int:
    """Minor page faults of this process so far (first touches of memory the OS hands out)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _rss_peak_of(step: Any) -> int | None:
    """Peak resident bytes during ``step()`` above the resident bytes before it (Linux only)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")  # resets VmHWM to the current VmRSS
        before = _proc_status_kb("VmRSS")
    except OSError:
        return None
    step()
    return 1024 * (_proc_status_kb("VmHWM") - before)


# -- measurements, each in a fresh process ------------------------------------------------------
class Bench:
    """The model, one input batch and an optimiser, as the variants train them."""

    def __init__(self, args: argparse.Namespace) -> None:
        if args.threads:
            torch.set_num_threads(args.threads)
        self.device = torch.device(args.device)
        self.stack = build_stack(args.blocks, args.hidden, args.num_blocks, args.seed).to(self.device).train()
        self.optimizer = torch.optim.Adam(self.stack.parameters(), lr=1e-4)
        gen = torch.Generator().manual_seed(args.seed + 1)
        self.x = torch.randn(args.batch, 3, 32, 32, generator=gen).to(self.device)

    def forward_backward(self, module: nn.Module) -> None:
        """Zero-grad, forward, Gaussian NLL, backward."""
        self.optimizer.zero_grad(set_to_none=True)
        z, logdet = module(self.x)
        loss = 0.5 * z.square().sum() / z.shape[0] - logdet.mean()
        loss.backward()

    def step(self, module: nn.Module) -> None:
        """One training step."""
        self.forward_backward(module)
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def info(self) -> dict[str, Any]:
        return {"device": str(self.device), "threads": torch.get_num_threads()}


def measure_memory(args: argparse.Namespace) -> dict[str, Any]:
    """Peak memory of one variant's step (called in a fresh subprocess per variant)."""
    bench = Bench(args)
    module = build_variant(args.variant, bench.stack)
    bench.step(module)  # warm-up: Adam state, allocator pools, kernel selection
    result: dict[str, Any] = {"variant": args.variant, **bench.info()}
    if bench.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(bench.device)
        before = torch.cuda.memory_allocated(bench.device)
        bench.forward_backward(module)
        torch.cuda.synchronize(bench.device)
        result["tensor_peak"] = torch.cuda.max_memory_allocated(bench.device) - before
    else:
        result["rss_peak"] = _rss_peak_of(lambda: bench.forward_backward(module))
        tracker = TensorPeak([bench.x, *bench.stack.parameters(), *bench.stack.buffers()])
        with tracker:
            bench.forward_backward(module)
        result["tensor_peak"] = tracker.peak
    return result


def measure_time(args: argparse.Namespace) -> dict[str, Any]:
    """Median step times of every variant, measured in turn so that load changes hit them alike.

    The forward pass without a graph (``FORWARD``) is timed in the same rounds, for the
    ``autograd+fwd`` estimate (module docstring).
    """
    bench = Bench(args)
    variants = available_variants()
    modules = {v: build_variant(v, bench.stack) for v in variants}

    def forward_only() -> None:
        with torch.no_grad():
            bench.stack(bench.x)

    flops, widest_flops, shape = conv_flops(bench.stack, bench.x)
    widest = torch.randn(*shape[0]).contiguous(memory_format=torch.channels_last).to(bench.device)
    kernel = torch.randn(*shape[1], device=bench.device)

    def reference_conv() -> None:
        with torch.no_grad():
            torch.nn.functional.conv2d(widest, kernel, padding="same")

    runs = {v: (lambda m=module: bench.step(m)) for v, module in modules.items()}
    runs[FORWARD] = forward_only
    runs[REFERENCE] = reference_conv
    for run in runs.values():
        run()  # warm-up
    wall: dict[str, list[float]] = {v: [] for v in runs}
    cpu: dict[str, list[float]] = {v: [] for v in runs}
    faults: dict[str, list[int]] = {v: [] for v in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            f0 = _minor_faults()
            t0, c0 = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            faults[name].append(_minor_faults() - f0)
    out: dict[str, Any] = {
        v: {
            "step_s": statistics.median(wall[v]),
            "cpu_s": statistics.median(cpu[v]),
            "faults": statistics.median(faults[v]),
            "step_s_all": [round(t, 4) for t in wall[v]],
        }
        for v in runs
    }
    out[FORWARD]["gflop"] = flops / 1e9
    out[REFERENCE]["gflop"] = widest_flops / 1e9
    return out


def conv_flops(stack: Sequential, x: Tensor) -> tuple[float, float, tuple[tuple[int, ...], ...]]:
    """Floating-point operations of the stack's convolutions in one forward pass, those of its
    most expensive convolution and that convolution's input and weight shapes (for the reference
    kernel).

    Counted with forward hooks on every ``nn.Conv2d`` (``2 · out.numel() · in/groups · kh · kw``)
    during one ordinary forward (the fused oneDNN path, which bypasses the hooks, switched off).
    """
    total = 0.0
    widest: tuple[float, tuple[tuple[int, ...], ...]] = (0.0, ((), ()))

    def hook(conv: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total, widest
        w = conv.weight  # type: ignore[union-attr]
        f = 2.0 * output.numel() * w.shape[1] * w.shape[2] * w.shape[3]
        total += f
        if f > widest[0]:
            widest = (f, (tuple(inputs[0].shape), tuple(w.shape)))

    handles = [m.register_forward_hook(hook) for m in stack.modules() if isinstance(m, nn.Conv2d)]
    was = onednn_mode()
    set_onednn_linear(False)
    try:
        with torch.no_grad():
            stack(x)
    finally:
        set_onednn_linear(was)
        for h in handles:
            h.remove()
    return total, widest[0], widest[1]


def _spawn(args: argparse.Namespace, measure: str, variant: str = "autograd") -> dict[str, Any]:
    """Run one measurement in a fresh subprocess (memory with the mmap threshold fixed)."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--measure",
        measure,
        "--variant",
        variant,
        "--device",
        args.device,
        "--batch",
        str(args.batch),
        "--blocks",
        str(args.blocks),
        "--hidden",
        str(args.hidden),
        "--num-blocks",
        str(args.num_blocks),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
    ]
    env = dict(os.environ)
    if measure == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--measure", choices=("memory", "time"), help="take one measurement in this process (internal)"
    )
    parser.add_argument(
        "--variant",
        choices=VARIANTS,
        default="autograd",
        help="the variant --measure memory measures (internal)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--num-blocks", type=int, default=2, help="residual blocks per conditioner")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    if args.measure:
        measure = measure_memory if args.measure == "memory" else measure_time
        print(json.dumps(measure(args)))
        return
    times = _spawn(args, "time")
    rows = [_spawn(args, "memory", v) | times[v] for v in available_variants()]
    base = rows[0]
    for row in rows:
        for key in ("tensor_peak", "rss_peak", "step_s", "cpu_s"):
            if row.get(key) is not None and base.get(key):
                row[f"{key}_ratio"] = round(row[key] / base[key], 3)
    forward = times[FORWARD]
    naive = {
        "variant": "autograd+fwd",
        "forward_no_graph_s": forward["step_s"],
        "step_s": base["step_s"] + forward["step_s"],
        "cpu_s": base["cpu_s"] + forward["cpu_s"],
    }
    naive["step_s_ratio"] = round(naive["step_s"] / base["step_s"], 3)
    naive["cpu_s_ratio"] = round(naive["cpu_s"] / base["cpu_s"], 3)
    ref = times[REFERENCE]
    rates = {
        "forward_gflop": round(forward["gflop"], 2),
        "forward_gflops": round(forward["gflop"] / forward["step_s"], 1),
        "reference_conv_gflops": round(ref["gflop"] / ref["step_s"], 1),
    }
    rates["forward_fraction_of_reference"] = round(
        rates["forward_gflops"] / rates["reference_conv_gflops"], 3
    )
    # convolution work per step in forward passes: autograd 3 (forward, input and weight
    # gradients), any method that keeps no activations 4 (one forward more)
    rates["autograd_conv_gflops"] = round(3 * forward["gflop"] / base["step_s"], 1)
    naive.update(rates)
    if args.json:
        print(json.dumps([*rows, naive], indent=2))
        return
    print(
        f"{args.blocks} additive couplings on 12×16×16, hidden {args.hidden}, batch {args.batch},"
        f" device {rows[0]['device']}, {rows[0]['threads']} thread(s)"
    )
    print(
        f"{'variant':<15}{'tensor peak MB':>16}{'ratio':>8}{'RSS peak MB':>13}{'ratio':>8}"
        f"{'step s':>9}{'ratio':>8}{'CPU s':>9}{'ratio':>8}{'faults':>9}"
    )
    nan = float("nan")
    for row in rows:
        rss = row.get("rss_peak")
        print(
            f"{row['variant']:<15}{row['tensor_peak'] / 2**20:>16.1f}"
            f"{row.get('tensor_peak_ratio', nan):>8.3f}"
            f"{(rss or 0) / 2**20:>13.1f}{row.get('rss_peak_ratio', nan):>8.3f}"
            f"{row['step_s']:>9.3f}{row.get('step_s_ratio', nan):>8.3f}"
            f"{row['cpu_s']:>9.3f}{row.get('cpu_s_ratio', nan):>8.3f}{row['faults']:>9.0f}"
        )
    print(
        f"{'autograd+fwd':<15}{'':>16}{'':>8}{'':>13}{'':>8}{naive['step_s']:>9.3f}"
        f"{naive['step_s_ratio']:>8.3f}{naive['cpu_s']:>9.3f}{naive['cpu_s_ratio']:>8.3f}"
        f"   (autograd step + the stack's forward without a graph, {forward['step_s']:.3f} s)"
    )
    print(
        f"convolutions: {rates['forward_gflop']:.1f} GFLOP a forward pass; without a graph at "
        f"{rates['forward_gflops']:.0f} GFLOP/s = {rates['forward_fraction_of_reference']:.2f}× "
        f"the widest convolution alone ({rates['reference_conv_gflops']:.0f} GFLOP/s); an "
        f"autograd step (3 passes' worth) at {rates['autograd_conv_gflops']:.0f} GFLOP/s"
    )
    if "memcnn" not in available_variants():
        print("memcnn: not installed (pip install --no-deps memcnn), not measured")


if __name__ == "__main__":
    main()
