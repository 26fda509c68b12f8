"""What a run records about the machine and software it ran on, and its device kind (a level of
the store's address: a GPU run never stands in for a CPU one)."""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent

if TYPE_CHECKING:
    import torch

def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=5)
        sha = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_kind(dev: "torch.device | str") -> str:
    """What kind of device ``dev`` is: "cpu", or "cuda:<device name>" (the name of *that* GPU)."""
    import torch

    dev = torch.device(dev)
    if dev.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(dev)}"
    return dev.type


def environment(dev: "torch.device | str | None" = None) -> dict[str, Any]:
    """The software and hardware of this process, for the device ``dev`` actually used."""
    import torch

    dev = torch.device(dev) if dev is not None else torch.device("cpu")
    env: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "git_sha": git_sha(),
        "cpu_threads": torch.get_num_threads(), "hostname": platform.node(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device_kind": device_kind(dev),
    }
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        env["gpu"] = torch.cuda.get_device_name(index)
        env["device"] = f"{env['gpu']} (cuda:{index})"
        env["cudnn"] = torch.backends.cudnn.version()
    else:
        env["gpu"] = None
        env["device"] = dev.type
    return env
