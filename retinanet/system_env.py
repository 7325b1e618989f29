"""ENV_KIND=system: the active Python as it is (a container's, a cluster module's), checked.

    python3 -m retinanet.system_env check [--all] [--loadgen VERSION]

prints one line per fact about its torch and torchvision to stderr (versions, CUDA) and the
packages of requirements.txt it lacks to stdout, one `name==version` a line, for setup.sh to
install. torch and torchvision are never on that list: the environment's own build stays.
A package counts as present at any version, since replacing a container's numpy or pandas
could break its torch; LoadGen is the exception, as the pinned upstream's checker needs its
own version. GitPython is not needed in a copy of the project without git (run records read
no commits there). Exits 1, with the reason, when torch or torchvision cannot be imported.

Standard library only: it runs before anything is installed.
"""

import argparse
import importlib.metadata
import re
import sys
from pathlib import Path

from retinanet import PROJECT_ROOT
from retinanet.patch_series import git_checkout

REQUIREMENTS = PROJECT_ROOT / "requirements.txt"
KEPT = {"torch", "torchvision"}  # the environment's own build, never installed by setup
GIT_ONLY = {"gitpython"}  # run records read the commits with it, where there is a .git
OPTIONAL_MARKER = "# -- optional with ENV_KIND=system"
# Other distributions that install the same import package, any of which will do.
EQUIVALENTS = {
    "opencv-python-headless": [
        "opencv-python",
        "opencv-contrib-python",
        "opencv-contrib-python-headless",
    ],
    "onnxruntime": ["onnxruntime-gpu"],
    "pillow": ["pillow-simd"],
}


def normalized(name):  # PEP 503
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(include_optional=False):
    """requirements.txt's pins, (name, version), without torch and torchvision; the optional
    block only when asked."""
    pins = []
    for line in REQUIREMENTS.read_text().splitlines():
        if line.startswith(OPTIONAL_MARKER) and not include_optional:
            break
        if not line.strip() or line.startswith("#"):
            continue
        name, version = line.split("==")
        if normalized(name) not in KEPT:
            pins.append((name.strip(), version.strip()))
    return pins


def installed_versions():
    return {
        normalized(dist.metadata["Name"]): dist.version
        for dist in importlib.metadata.distributions()
        if dist.metadata["Name"]
    }


def missing(include_optional=False, loadgen=None):
    """The requirements this Python lacks, as `name==version`, in requirements.txt's order."""
    have = installed_versions()
    lacking = []
    for name, version in requirements(include_optional):
        if normalized(name) in GIT_ONLY and not git_checkout():
            continue
        names = [name] + EQUIVALENTS.get(normalized(name), [])
        if not any(normalized(n) in have for n in names):
            lacking.append(f"{name}=={version}")
    if loadgen and have.get("mlcommons-loadgen") != loadgen:
        lacking.append(f"mlcommons-loadgen=={loadgen}")
    return lacking


def torch_facts():
    """One line about torch, torchvision and the GPU; raises ImportError when either is not
    usable."""
    import torch
    import torchvision

    line = f"torch {torch.__version__}, torchvision {torchvision.__version__}"
    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        return (
            f"{line}, CUDA {torch.version.cuda} on {torch.cuda.device_count()} GPU(s): "
            f"{', '.join(names)}"
        )
    built = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU build"
    return f"{line}, CUDA: not visible ({built}; runs use the CPU)"


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=["check"])
    parser.add_argument("--all", action="store_true", help="the optional packages too")
    parser.add_argument("--loadgen", help="the mlcommons-loadgen version the pin needs")
    args = parser.parse_args()
    try:
        facts = torch_facts()
    except Exception as error:  # ImportError, or a broken build (missing CUDA libraries)
        sys.exit(
            f"{sys.executable} has no usable torch and torchvision "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}): "
            "ENV_KIND=system uses the environment's own; install a build of them there, or use "
            "ENV_KIND=venv"
        )
    print(f"{Path(sys.executable)}: {facts}", file=sys.stderr)
    for requirement in missing(args.all, args.loadgen):
        print(requirement)


if __name__ == "__main__":
    main()
