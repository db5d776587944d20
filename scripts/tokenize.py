"""Encode a dataset to token files for training autoregressive models; multi-GPU (torchrun) and resumable.
The implementation and the file format are in taming/tokens.py (`python scripts/tokenize.py --help`).

This file's name is also the standard library's `tokenize` (imported by linecache, inspect and so torch).
Running any `python scripts/<tool>.py` puts scripts/ first on sys.path, so an `import tokenize` there finds
this file: in that case it loads the real standard-library module in its place and does nothing else.
"""
import os
import sys

if __name__ == "tokenize":
    import importlib.util

    _spec = importlib.util.spec_from_file_location("tokenize", os.path.join(os.path.dirname(os.__file__), "tokenize.py"))
    _stdlib = importlib.util.module_from_spec(_spec)
    sys.modules["tokenize"] = _stdlib  # the import statement hands out sys.modules["tokenize"]
    _spec.loader.exec_module(_stdlib)
else:
    _SCRIPT_DIR = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _SCRIPT_DIR]
    sys.path.insert(0, os.path.dirname(_SCRIPT_DIR))
    from taming.tokens import main

    if __name__ == "__main__":
        main()
