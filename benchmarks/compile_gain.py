"""What ``train.compile`` buys: a training step with and without ``torch.compile``, per preset.

For each preset the script builds the run's trainer (model, objective, optimiser, data), performs
the data-dependent initialisation, then compiles the transform's forward pass as
:class:`flowkit.execution.compiled.CompiledTraining` does and times full training steps (batch, loss,
backward, optimiser step) of the eager and the compiled model in turns, in one process, so that a
change of load hits both alike. It reports the compilation time (the first two compiled steps)
and the median step of each, with their ratio::

    .venv/bin/python benchmarks/compile_gain.py --data-dir ../shared/data \\
        realnvp-digits realnvp-mnist glow-mnist

Presets on MNIST need the data folder (``--data-dir`` or ``$FLOWKIT_DATA``); ``realnvp-digits``
runs on the embedded digits.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import torch

from flowkit.config import load_config
from flowkit.trainer import Trainer


def measure(preset: str, data_dir: str | None, threads: int, repeats: int) -> dict[str, float]:
    """Compilation time and median eager and compiled step times of one preset."""
    overrides = [f"train.threads={threads}"] if threads else []
    cfg = load_config(preset, overrides, data_dir=data_dir)
    trainer = Trainer(cfg, tempfile.mkdtemp(prefix="flowkit-compile-"), progress=False, log=lambda _: None)
    trainer.initialize()
    trainer.model.train()
    transform = trainer.model.transform
    eager = transform.forward
    counter = iter(range(10**9))

    def step() -> None:
        s = next(counter)
        batch = trainer._batch(s)
        out = trainer.objective.loss(trainer.model, batch, s)
        trainer.optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        trainer.optimizer.step()

    t0 = time.perf_counter()
    compiled = torch.compile(eager, dynamic=False)
    transform.forward = compiled
    step()
    step()
    compile_s = time.perf_counter() - t0
    transform.forward = eager
    step()  # warm-up of the eager path
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(repeats):
        for name, forward in (("eager", eager), ("compiled", compiled)):
            transform.forward = forward
            t = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t)
    transform.forward = eager
    eager_s, compiled_s = statistics.median(times["eager"]), statistics.median(times["compiled"])
    return {
        "compile_s": compile_s,
        "eager_ms": 1e3 * eager_s,
        "compiled_ms": 1e3 * compiled_s,
        "ratio": compiled_s / eager_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*", default=["realnvp-digits"])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{'preset':<18}{'compile s':>10}{'eager ms':>10}{'compiled ms':>13}{'ratio':>8}")
    for preset in args.presets:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            r = measure(preset, args.data_dir, args.threads, args.repeats)
        torch._dynamo.reset()
        print(
            f"{preset:<18}{r['compile_s']:>10.1f}{r['eager_ms']:>10.1f}"
            f"{r['compiled_ms']:>13.1f}{r['ratio']:>8.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
