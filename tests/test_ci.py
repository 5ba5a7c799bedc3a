"""CI's cached environment (.ci/venv.sh, .ci/venv_key.py) follows what a fresh install
resolves: offline, with real pip, on wheels made here."""
import base64
import hashlib
import importlib.util
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _venv_key():
    spec = importlib.util.spec_from_file_location("venv_key", ROOT / ".ci" / "venv_key.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _item(name, version, requested=False, url=None, local=False):
    info = ({"url": url or "file:///clone", "dir_info": {}} if local else
            {"url": url or f"https://files.example/{name}-{version}.whl",
             "archive_info": {"hash": "sha256=00"}})
    return {"download_info": info, "is_direct": local or url is not None,
            "requested": requested, "metadata": {"name": name, "version": version}}


def _report(*items, python="3.11.7"):
    return {"version": "1", "install": list(items),
            "environment": {"implementation_name": "cpython", "python_full_version": python,
                            "platform_machine": "x86_64", "sys_platform": "linux"}}


def test_the_key_names_every_resolved_version_and_nothing_else():
    venv_key = _venv_key()
    base = [_item("clplatform", "0.1.0", requested=True, local=True),
            _item("torch", "2.14.1"), _item("Typing_Extensions", "4.15.0")]
    key = venv_key.environment_key(_report(*base))
    assert venv_key.resolved_pins(_report(*base)) == ["torch==2.14.1",
                                                      "typing-extensions==4.15.0"]
    # order, and the clone's path, do not matter
    moved = [_item("clplatform", "0.1.0", requested=True, local=True, url="file:///other")]
    assert venv_key.environment_key(_report(*reversed(base[1:]), *moved)) == key
    # a new release of a transitive dependency, a new dependency, another Python: new key
    assert venv_key.environment_key(_report(base[0], base[1],
                                            _item("typing-extensions", "4.16.0"))) != key
    assert venv_key.environment_key(_report(*base, _item("filelock", "3.20.0"))) != key
    assert venv_key.environment_key(_report(*base, python="3.11.8")) != key
    direct = _item("tool", "1.0", url="https://example.org/tool.tar.gz")
    assert venv_key.resolved_pins(_report(direct)) == ["tool @ https://example.org/tool.tar.gz"]


def _wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A pure-Python wheel, written directly (nothing to build)."""
    dist_info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f"VERSION = {version!r}\n",
             f"{dist_info}/METADATA": "Metadata-Version: 2.1\n"
             f"Name: {name}\nVersion: {version}\n"
             + "".join(f"Requires-Dist: {r}\n" for r in requires),
             f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\n"
                                   "Root-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest())
        record.append(f"{path},sha256={digest.rstrip(b'=').decode()},{len(text.encode())}")
    files[f"{dist_info}/RECORD"] = "\n".join(record + [f"{dist_info}/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


@pytest.mark.slow
def test_ci_venv_is_rebuilt_when_a_dependency_would_resolve_differently(tmp_path):
    """setup.cfg unchanged, a transitive dependency released anew: the old scheme (venv keyed
    on setup.cfg, `pip install` into it) kept the old release; a fresh environment gets the
    new one, and so must CI. Unchanged resolution: the environment is re-used."""
    wheels, root = tmp_path / "wheels", tmp_path / "root"
    wheels.mkdir()
    _wheel(wheels, "depone", "1.0", requires=("deptwo>=1.0",))
    _wheel(wheels, "deptwo", "1.0")
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels),
           "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}

    def ci_venv() -> Path:
        done = subprocess.run(["bash", "-c", f'source .ci/venv.sh && ci_venv "{root}" depone'],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return Path(done.stdout.strip())

    def version_in(venv: Path, module: str) -> str:
        return subprocess.run([str(venv / "bin" / "python"), "-c",
                               f"import {module}; print({module}.VERSION)"],
                              capture_output=True, text=True, check=True).stdout.strip()

    first = ci_venv()
    assert version_in(first, "deptwo") == "1.0"
    (first / "kept").touch()
    assert ci_venv() == first and (first / "kept").exists()  # re-used, not rebuilt

    _wheel(wheels, "deptwo", "1.1")
    second = ci_venv()
    assert second != first and version_in(second, "deptwo") == "1.1"
    assert version_in(second, "depone") == "1.0"

    (second / ".complete").unlink()  # a build that did not finish is not trusted
    (second / "kept").touch()
    assert ci_venv() == second and not (second / "kept").exists()


def test_ci_run_takes_its_environment_from_ci_venv():
    script = (ROOT / ".ci" / "run").read_text()
    assert "source .ci/venv.sh" in script
    assert "ci_venv \"${CLPLATFORM_CI_VENV_ROOT:-$HOME/.cache/clplatform-ci}\" '.[test]'" in script
    # README's install and test command stays the last word
    assert script.rstrip().splitlines()[-1] == "pip install '.[test]' && python -m pytest"
    assert subprocess.run(["bash", "-n", str(ROOT / ".ci" / "run")]).returncode == 0
