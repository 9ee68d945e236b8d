"""faultlab as users get it: this checkout built into a wheel (or installed as ``pip install DIR`` does) in a
fresh virtualenv, run from a directory outside the checkout.

The fresh virtualenv gets faultlab itself with ``--no-deps``; its dependencies come from the environment running
the tests, through a ``.pth`` file that adds that environment's site-packages (with the system's, when it sees
them) to the end of ``sys.path`` (no
download, and ``.pth`` files there, such as an editable install's finder, are not run). :func:`check_isolated`
makes sure the faultlab that runs is the installed one, not the checkout.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# What a build never needs: version control, environments, build output, caches, measurements.
NOT_SHIPPED = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "bench", "node_modules")
TIMEOUT = 120


def run(argv: list[str | Path], **kwargs) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("timeout", TIMEOUT)
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kwargs)


def copy_checkout(dest: Path) -> Path:
    """The working tree as it would be built (links kept as links, as git keeps them), without build leftovers
    that could leak stale files into a wheel."""
    shutil.copytree(REPO, dest, symlinks=True, ignore=shutil.ignore_patterns(*NOT_SHIPPED))
    return dest


def build_wheel(src: Path, out: Path) -> Path:
    """``pip wheel --no-deps`` of ``src`` into ``out``: the wheel file."""
    done = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w", out,
                src])
    assert done.returncode == 0, f"pip wheel failed:\n{done.stdout}\n{done.stderr}"
    [wheel] = out.glob("faultlab-*.whl")
    return wheel


def fresh_venv(path: Path) -> Path:
    """A new virtualenv without pip whose ``sys.path`` ends with this environment's site-packages (faultlab's
    dependencies). Returns its python."""
    venv.create(path, with_pip=False, symlinks=True)
    python = path / "bin" / "python"
    own = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    deps = dict.fromkeys([*site.getsitepackages(), *(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))])
    (own / "zz-test-dependencies.pth").write_text("".join(f"{d}\n" for d in deps))
    return python


def pip_install(python: Path, *args: str | Path) -> None:
    """``pip install --no-deps ARGS`` into the virtualenv of ``python`` (this environment's pip drives it)."""
    done = run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
                "--disable-pip-version-check", "-q", *args])
    assert done.returncode == 0, f"pip install failed:\n{done.stdout}\n{done.stderr}"


def user_env(venv_dir: Path, home: Path, **extra: str) -> dict[str, str]:
    """The environment of a user whose PATH has the virtualenv first: no checkout on PYTHONPATH, no library
    search path unless given, faultlab's state in ``home``, wide tables."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "FAULTLAB_PATH", "FAULTLAB_HOME", "FAULTLAB_API_TOKEN")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(PATH=f"{venv_dir / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
               FAULTLAB_HOME=str(home), COLUMNS="200", PYTHONNOUSERSITE="1")
    env.update(extra)
    return env


def check_isolated(python: Path, venv_dir: Path, env: dict[str, str], cwd: Path) -> None:
    """The faultlab that runs is the one installed in ``venv_dir``, not the checkout."""
    done = run([python, "-c", "import faultlab, faultlab.library as l; print(faultlab.__file__); "
                "print(l.builtin_dir('profiles'))"], env=env, cwd=cwd)
    assert done.returncode == 0, done.stderr
    module, builtin = (Path(line) for line in done.stdout.split())
    assert module.resolve().is_relative_to(venv_dir.resolve()), f"faultlab imported from {module}, not {venv_dir}"
    assert not module.resolve().is_relative_to(REPO), module
    assert builtin.is_relative_to(venv_dir.resolve()) and builtin.is_dir(), builtin
