"""Training throughput with 1 and with N processes (torchrun, DDP), same global batch.

    python benchmarks/distributed.py                     # 1 process vs 2, digits OSDN default
    python benchmarks/distributed.py --nproc 2 4 --steps 30 train.batch_size=128
    python benchmarks/distributed.py --threads 1         # intra-op threads per process

For each process count the script starts
``torchrun --standalone --nproc_per_node=N benchmarks/distributed.py --worker``;
each worker builds the configured model (default: OSDN with PGD-5 on digits,
global batch 64) and times ``--steps`` training steps of
:class:`osad.train.parallel.DataParallelStep` after two warm-up steps, on the
same global batches whatever N. Rank 0 prints images per second (global batch
x steps / wall time). By default a run of N processes gives each
``cores // N`` intra-op threads, so every run uses the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
from common import describe_machine


def worker(overrides: list[str], steps: int) -> None:
    from osad.config import make_config
    from osad.data import load_openset, to_float
    from osad.distributed import barrier, init_from_env, is_main, process_device, shutdown
    from osad.runtime import resolve_device, seed_everything
    from osad.train import build_model_for
    from osad.train.factory import make_optimizer
    from osad.train.objectives import TrainObjective
    from osad.train.parallel import DataParallelStep

    world = init_from_env()
    config = make_config(overrides=overrides)
    device = process_device(resolve_device(config.device))
    data = load_openset(config.data).to(device)
    seed_everything(config.seed)
    model = build_model_for(config, data)[0].to(device)
    t = config.train
    objective = TrainObjective.for_network(config)
    step = DataParallelStep(model, objective, t.grad_accumulation)
    optimizer = make_optimizer(config, model)
    order = torch.randperm(len(data.train_labels), generator=torch.Generator().manual_seed(0))
    batches = [order[i : i + t.batch_size] for i in range(0, len(order), t.batch_size)]
    batches = [b for b in batches if len(b) == t.batch_size]
    model.train()

    def run(count: int) -> None:
        for k in range(count):
            indices = batches[k % len(batches)].to(device)
            step.accumulate(
                indices, lambda i: (to_float(data.train_images[i]), data.train_labels[i])
            )
            optimizer.step()

    run(2)
    barrier()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run(steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    barrier()
    seconds = time.perf_counter() - start
    if is_main():
        images = steps * t.batch_size
        print(
            json.dumps({"processes": world.size, "seconds": seconds, "images_s": images / seconds})
        )
    shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, help="intra-op threads per process")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.batch_size=128")
    args = parser.parse_args()
    if args.worker:
        worker(args.overrides, args.steps)
        return
    cores = os.cpu_count() or 1
    print(f"device: {describe_machine(torch.device('cpu'))}; overrides: {args.overrides}")
    results = {}
    for n in args.nproc:
        threads = args.threads or max(cores // n, 1)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += [f"--nproc_per_node={n}", __file__, "--worker", "--steps", str(args.steps)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        done = subprocess.run(command + args.overrides, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            sys.exit(f"{n} process(es) failed:\n{done.stderr[-2000:]}")
        line = [s for s in done.stdout.splitlines() if s.startswith("{")][-1]
        results[n] = json.loads(line)
        print(
            f"{n} process(es) x {threads} thread(s): {results[n]['images_s']:.1f} images/s "
            f"({args.steps} steps in {results[n]['seconds']:.1f} s)"
        )
    base = results[args.nproc[0]]["images_s"]
    for n in args.nproc[1:]:
        print(f"speed-up {n} vs {args.nproc[0]}: {results[n]['images_s'] / base:.2f}x")


if __name__ == "__main__":
    main()
