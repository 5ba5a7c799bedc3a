"""The key of a cached CI virtual environment: what a fresh install would put in it today.

Reads the JSON report of ``pip install --dry-run --ignore-installed --report FILE REQ...``
(pip resolves REQ from the registry as if nothing were installed) and prints a key: a hash of
the interpreter and platform and of every distribution the resolver picked, direct and
transitive, as ``name==version``. Local source trees (the project itself) are left out: their
path changes with the clone and their code is what is tested. ``--constraints FILE`` also
writes the pins, so that the environment built for the key holds exactly those versions.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys

ENVIRONMENT_KEYS = ("implementation_name", "python_full_version", "platform_machine",
                    "sys_platform")


def canonical_name(name: str) -> str:
    """PEP 503: ``Foo_Bar.baz`` -> ``foo-bar-baz``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def resolved_pins(report: dict) -> list[str]:
    """``name==version`` of every distribution to install, sorted; ``name @ URL`` for one
    from a direct URL (no version on the registry says what it holds)."""
    pins = {}
    for item in report["install"]:
        info = item.get("download_info", {})
        if "dir_info" in info:  # a local source tree: the project under test
            continue
        name = canonical_name(item["metadata"]["name"])
        pins[name] = (f"{name} @ {info['url']}" if item.get("is_direct")
                      else f"{name}=={item['metadata']['version']}")
    return [pins[name] for name in sorted(pins)]


def environment_key(report: dict) -> str:
    environment = report.get("environment", {})
    basis = [f"{k}={environment.get(k)}" for k in ENVIRONMENT_KEYS] + resolved_pins(report)
    return hashlib.sha256("\n".join(basis).encode()).hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="pip's --report JSON")
    parser.add_argument("--constraints", metavar="FILE", help="also write the pins here")
    args = parser.parse_args(argv)
    with open(args.report, encoding="utf-8") as fh:
        report = json.load(fh)
    if args.constraints:
        with open(args.constraints, "w", encoding="utf-8") as fh:
            fh.writelines(f"{pin}\n" for pin in resolved_pins(report) if " @ " not in pin)
    print(environment_key(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
