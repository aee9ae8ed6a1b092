"""`lowbit inspect --json` lists every tensor exactly as the Python safetensors package reads it:
the real stories15M checkpoint (where ../shared/data is present) and files the package writes here."""
import json
import os
import subprocess
import sys

from interop_util import parse_args, require

args = parse_args()
np, safetensors_numpy, safetensors = require("numpy", "safetensors.numpy", "safetensors")
from safetensors import safe_open  # noqa: E402

SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2,
         "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def python_listing(path):
    """{name: (dtype, shape, bytes)} and metadata, as the safetensors package reads the file."""
    out = {}
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata() or {}
        for name in f.keys():
            s = f.get_slice(name)
            shape = list(s.get_shape())
            dtype = s.get_dtype()
            out[name] = (dtype, shape, int(np.prod(shape, dtype=np.int64)) * SIZES[dtype])
    return out, meta


def lowbit_listing(path):
    r = subprocess.run([args.lowbit, "inspect", "--json", path], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"lowbit inspect failed on {path}: {r.stderr}")
    j = json.loads(r.stdout)
    out = {t["name"]: (t["dtype"], t["shape"], t["bytes"]) for t in j["tensors"]}
    meta = {}
    for f in j["files"]:
        meta.update(f["metadata"])
    return out, meta, j["total"]


def compare(path):
    theirs, their_meta = python_listing(path)
    ours, our_meta, total = lowbit_listing(path)
    if theirs != ours:
        missing = sorted(set(theirs) - set(ours))
        extra = sorted(set(ours) - set(theirs))
        differ = sorted(k for k in set(theirs) & set(ours) if theirs[k] != ours[k])
        sys.exit(f"{path}: listings differ; missing {missing[:5]}, extra {extra[:5]}, "
                 f"different {[(k, theirs[k], ours[k]) for k in differ[:5]]}")
    if their_meta != our_meta:
        sys.exit(f"{path}: metadata differs: python {their_meta} lowbit {our_meta}")
    assert total["tensors"] == len(theirs), total
    assert total["bytes"] == sum(v[2] for v in theirs.values()), total
    print(f"ok: {path}: {len(theirs)} tensors, {total['bytes']} bytes")


os.makedirs(args.work, exist_ok=True)
rng = np.random.default_rng(11)
made = os.path.join(args.work, "inspect_made_by_python.safetensors")
safetensors_numpy.save_file({
    "a.weight": rng.standard_normal((17, 33)).astype(np.float32),
    "b.f16": rng.standard_normal((3, 5, 7)).astype(np.float16),
    "c.i8": rng.integers(-128, 127, size=(9,), dtype=np.int8),
    "d.u8.empty": np.zeros((0, 4), dtype=np.uint8),
    "e.i64": np.arange(6, dtype=np.int64).reshape(2, 3),
    "f.f64.scalar": np.array(3.5, dtype=np.float64),
    "g.bool": np.array([True, False, True]),
}, made, metadata={"format": "np", "note": "made by tests/interop/test_inspect.py"})
compare(made)

real = os.path.join(args.shared_data, "stories15M", "model.safetensors")
if os.path.exists(real):
    compare(real)
    # The folder form lists the same tensors.
    ours, _, _ = lowbit_listing(os.path.dirname(real))
    theirs, _ = python_listing(real)
    assert ours == theirs, "folder listing differs from the file's"
    print("ok: folder form")
else:
    print(f"note: {real} is absent; compared only files made here")
