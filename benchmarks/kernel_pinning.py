"""Do the pinned kernels make the CPU irrelevant? The demo's SFT stage under several CPUs.

Runs the first stage of the demo (``sdpo fit -c configs/quickstart_sft.yaml``, a few steps)
once per setting below, each in its own process, and prints the SHA-256 of the trained
weights and the last training loss. Settings:

* ``native``: every library on its fastest path for this CPU;
* ``pinned``: ``sdpo_lightning.kernels.PINNED`` (what ``make demo`` uses);
* ``pinned+<cpu>``: the pinned setting inside ``qemu-x86_64 -cpu <cpu>``, an emulated CPU
  that lacks this machine's instructions (e.g. ``EPYC-Rome``: AVX2, no AVX-512;
  ``Haswell``: an Intel one). Needs ``qemu-user`` (Debian: ``apt-get install qemu-user``);
  emulation is 20-50x slower, so keep ``--steps`` small.

The claim holds if every ``pinned*`` row has the same hash. Data and tokenizer are generated
once (natively; they involve no float kernels) and shared by all settings.

    python benchmarks/kernel_pinning.py --steps 8 --qemu EPYC-Rome Haswell
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sdpo_lightning.kernels import PINNED  # noqa: E402

#: runs inside the child: trains, then prints the weights' hash and the last loss
_CHILD = """
import hashlib, sys, torch
from sdpo_lightning.cli import SDPOCLI
from sdpo_lightning.data.datamodule import RecDataModule
from sdpo_lightning.training.module import SDPOModule
cli = SDPOCLI(SDPOModule, RecDataModule, seed_everything_default=0, args=sys.argv[1:])
h = hashlib.sha256()
for name, p in sorted(cli.model.policy.state_dict().items()):
    h.update(name.encode()); h.update(p.detach().float().contiguous().numpy().tobytes())
loss = cli.trainer.callback_metrics.get("train/loss")
print("RESULT", torch.backends.cpu.get_cpu_capability(), h.hexdigest()[:16],
      "nan" if loss is None else f"{float(loss):.10f}")
"""


def run_setting(
    name: str, work: Path, steps: int, qemu_cpu: str | None
) -> tuple[str, str, str, float]:
    """One training run; returns (ATen capability, weights hash, last loss, seconds)."""
    env = {
        **os.environ,
        "OMP_WAIT_POLICY": "PASSIVE",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    if name.startswith("pinned"):
        env.update(PINNED)
    root = work / name
    args = [
        "fit",
        "-c",
        str(REPO / "configs" / "quickstart_sft.yaml"),
        f"--trainer.default_root_dir={root}",
        f"--trainer.max_steps={steps}",
        "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
    ]
    cmd = [sys.executable, "-c", _CHILD, *args]
    if qemu_cpu:
        cmd = ["qemu-x86_64", "-cpu", qemu_cpu, *cmd]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-2000:]}")
    _, cap, digest, loss = line.split()
    return cap, digest, loss, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=8, help="training steps per run")
    parser.add_argument(
        "--qemu",
        nargs="*",
        default=[],
        metavar="CPU",
        help="qemu-x86_64 CPU models to run the pinned setting on",
    )
    args = parser.parse_args(argv)
    if args.qemu and shutil.which("qemu-x86_64") is None:
        parser.error("--qemu needs qemu-x86_64 (Debian: apt-get install qemu-user)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "sdpo_lightning.data.synthetic",
                "--out",
                str(work / "runs" / "quickstart" / "data"),
                "--config",
                str(REPO / "configs" / "quickstart_data.yaml"),
            ],
            check=True,
            capture_output=True,
        )
        settings = [("native", None), ("pinned", None), *((f"pinned+{c}", c) for c in args.qemu)]
        rows = [(name, *run_setting(name, work, args.steps, cpu)) for name, cpu in settings]
    digests = {digest for name, _, digest, _, _ in rows if name.startswith("pinned")}
    print("| setting | ATen capability | weights SHA-256 (16) | last train/loss | seconds |")
    print("|:--|:--|:--|--:|--:|")
    for name, cap, digest, loss, secs in rows:
        print(f"| {name} | {cap} | `{digest}` | {loss} | {secs:.0f} |")
    verdict = "the same weights" if len(digests) == 1 else "DIFFERENT weights"
    print(f"\n{args.steps} SFT steps; every pinned setting gives {verdict}.")
    return 0 if len(digests) == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
