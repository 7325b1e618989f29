"""Facts about this machine and this Python, in one place: what run.json records, what the
auto settings choose by (settings_auto.py), what a submission's system description and the
benchmark tools print.

    host()        run.json's host: name, platform, CPU, its flags, cores, CUDA and GPUs
    facts()       everything a measured figure depends on, for tools that print figures
    environment() the kind of Python environment and which Python
    versions()    the versions of the packages a run depends on

torch is imported only by the facts that need it (accelerator, native_bf16, has_nnpack).
"""

import datetime
import importlib.metadata
import os
import platform
import re
import sys
from pathlib import Path

from retinanet import PROJECT_ROOT

# what decides the CPU's fast paths: AVX2 only, AVX-512, native bf16 (AVX512-BF16, AMX)
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
PACKAGES = (
    "torch",
    "torchvision",
    "mlcommons-loadgen",
    "numpy",
    "pandas",
    "pycocotools",
    "opencv-python-headless",
    "onnxruntime",
    "onnxruntime-gpu",
    "ray",
)


def proc_text(name):
    """A file of /proc, or "" where there is none."""
    try:
        return Path("/proc", name).read_text()
    except OSError:
        return ""


def cpuinfo(field):
    """The first value of a /proc/cpuinfo field, or None."""
    for line in proc_text("cpuinfo").splitlines():
        if line.split(":", 1)[0].strip() == field:
            return line.split(":", 1)[1].strip()
    return None


def cpu_model():
    return cpuinfo("model name") or platform.processor()


def cpu_flags():
    """Those of CPU_FLAGS this CPU has."""
    present = set((cpuinfo("flags") or "").split())
    return [flag for flag in CPU_FLAGS if flag in present]


def sockets():
    """CPU sockets (physical ids in /proc/cpuinfo); None where it does not say."""
    found = set(re.findall(r"^physical id\s*:\s*(\d+)", proc_text("cpuinfo"), re.M))
    return len(found) or None


def cores_per_socket():
    found = cpuinfo("cpu cores")
    return int(found) if found else None


def memory_total():
    """Bytes of memory (MemTotal); None where /proc does not say."""
    found = re.search(r"^MemTotal:\s+(\d+) kB", proc_text("meminfo"), re.M)
    return int(found.group(1)) * 1024 if found else None


def available_memory():
    """Linux's MemAvailable: free memory and the page cache it would give back (free memory
    alone shrinks as the page cache grows, whatever is running)."""
    found = re.search(r"^MemAvailable:\s+(\d+) kB", proc_text("meminfo"), re.M)
    if found:
        return int(found.group(1)) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def native_bf16():
    """AVX512-BF16 or AMX: without them oneDNN emulates bf16, 12x slower than fp32.

    Measured in BENCHMARKS.md."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def has_nnpack():
    import torch

    return torch._nnpack_available()


def torch_threads():
    """torch's intra-op threads by default here: one per core it may use."""
    import torch

    return torch.get_num_threads()


def cuda_available():
    import torch

    return torch.cuda.is_available()


def accelerator():
    """CUDA and cuDNN as torch was built with them, and the GPUs it sees."""
    import torch

    info = {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "gpus": []}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def versions():
    """Python's version and those of the packages a run depends on that are installed."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def environment():
    """The kind of Python environment (make's ENV_KIND: venv, conda, or system, a container's
    Python as it is), and which Python that is."""
    kind = os.environ.get("ENV_KIND")
    if not kind:  # a run started without make
        kind = "venv" if Path(sys.prefix).resolve() == (PROJECT_ROOT / ".venv").resolve() else None
    return {"kind": kind, "python": sys.executable, "prefix": sys.prefix}


def host():
    """run.json's host."""
    return {
        "name": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpus": os.cpu_count(),
        **accelerator(),
    }


def facts():
    """Everything a measured figure depends on, and when it was taken: host(), the CPU flags
    it lacks, native bf16, NNPACK, memory (total and available), the package versions and
    the environment."""
    found = host()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
        **found,
        "missing_cpu_flags": [flag for flag in CPU_FLAGS if flag not in found["cpu_flags"]],
        "native_bf16": native_bf16(),
        "nnpack": has_nnpack(),
        "memory_bytes": memory_total(),
        "memory_available_bytes": available_memory(),
        "versions": versions(),
        "environment": environment(),
    }
