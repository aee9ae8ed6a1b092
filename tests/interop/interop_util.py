"""Shared by the interoperability tests: arguments, and the "skipped" exit code ctest understands."""
import argparse
import importlib
import sys

SKIP = 77  # tests/CMakeLists.txt sets SKIP_RETURN_CODE 77


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--lowbit", required=True, help="path to the lowbit CLI")
    p.add_argument("--shared-data", required=True, help="../shared/data")
    p.add_argument("--work", required=True, help="scratch folder")
    return p.parse_args()


def require(*modules):
    """Imports each module or exits 'skipped', naming what is missing and how to get it."""
    loaded = []
    for name in modules:
        try:
            loaded.append(importlib.import_module(name))
        except ImportError as e:
            print(f"SKIPPED: python package '{name}' is not installed ({e}); run scripts/setup-python.sh")
            sys.exit(SKIP)
    return loaded
