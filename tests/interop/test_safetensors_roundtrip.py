"""Files the Python safetensors package writes, in every dtype it shares with lowbit and in the shapes that
catch off-by-one layouts (scalar, zero-size, rank 4, odd sizes), are listed by `lowbit inspect --json` exactly
as written; a sharded folder with an index is listed shard by shard; and files the package would refuse,
lowbit refuses too, naming the file. (That the package loads files lowbit writes is checked by the C++ test
SafetensorsInterop.PythonPackageLoadsOurFiles.)

    python3 test_safetensors_roundtrip.py --lowbit PATH_TO_CLI --shared-data DIR --work DIR
Exit 77 (skipped) when numpy or safetensors is not installed.
"""
import json
import os
import struct
import subprocess
import sys

from interop_util import parse_args, require

args = parse_args()
np, safetensors = require("numpy", "safetensors")

# safetensors dtype -> (name for safetensors.serialize, bytes per element)
DTYPES = {
    "F64": ("float64", 8), "I64": ("int64", 8), "U64": ("uint64", 8),
    "F32": ("float32", 4), "I32": ("int32", 4), "U32": ("uint32", 4),
    "F16": ("float16", 2), "BF16": ("bfloat16", 2), "I16": ("int16", 2), "U16": ("uint16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1), "I8": ("int8", 1), "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}
SHAPES = [(), (1,), (3, 5), (0, 4), (2, 1, 3, 1), (17,)]
failures = []


def serialize(tensors, metadata=None):
    """tensors: {name: (safetensors dtype, shape, raw bytes)} -> file bytes, written by the package itself."""
    specs, keep_alive = {}, []
    for name, (dtype, shape, data) in tensors.items():
        if hasattr(safetensors, "TensorSpec"):  # safetensors >= 0.7
            buffer = np.frombuffer(data, np.uint8) if data else np.zeros(1, np.uint8)
            keep_alive.append(buffer)
            specs[name] = safetensors.TensorSpec(dtype=DTYPES[dtype][0], shape=list(shape),
                                                 data_ptr=buffer.ctypes.data, data_len=len(data))
        else:
            specs[name] = {"dtype": DTYPES[dtype][0], "shape": list(shape), "data": data}
    return safetensors.serialize(specs, metadata=metadata)


def random_bytes(rng, dtype, shape):
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if dtype == "BOOL":
        return bytes(rng.integers(0, 2, count, dtype=np.uint8))
    return bytes(rng.integers(0, 256, count * DTYPES[dtype][1], dtype=np.uint8))


def inspect(path):
    """(returncode, parsed JSON or None, stderr) of `lowbit inspect --json path`."""
    r = subprocess.run([args.lowbit, "inspect", "--json", path], capture_output=True, text=True)
    if r.returncode != 0:
        return r.returncode, None, r.stderr
    return 0, json.loads(r.stdout), r.stderr


def check(condition, message):
    if not condition:
        failures.append(message)
        print("FAIL:", message)


def expect_listing(path, written, shard_of=None):
    """written: {name: (dtype, shape, bytes)}; shard_of: {name: file name} for folders."""
    code, listing, stderr = inspect(path)
    if code != 0:
        check(False, f"{path}: lowbit inspect failed ({code}): {stderr.strip()}")
        return
    got = {t["name"]: t for t in listing["tensors"]}
    check(sorted(got) == sorted(written), f"{path}: names {sorted(got)} != {sorted(written)}")
    for name, (dtype, shape, data) in written.items():
        t = got.get(name)
        if t is None:
            continue
        want = (dtype, list(shape), len(data))
        have = (t["dtype"], list(t["shape"]), t["bytes"])
        check(have == want, f"{path}: '{name}' listed as {have}, written as {want}")
        if shard_of is not None and "file" in t:
            check(os.path.basename(t["file"]) == shard_of[name],
                  f"{path}: '{name}' listed in {t['file']}, written to {shard_of[name]}")
    total = listing["total"]
    check(total["tensors"] == len(written), f"{path}: total tensors {total['tensors']} != {len(written)}")
    check(total["bytes"] == sum(len(d) for _, _, d in written.values()),
          f"{path}: total bytes {total['bytes']} != {sum(len(d) for _, _, d in written.values())}")
    parameters = sum(int(np.prod(s, dtype=np.int64)) if s else 1 for _, s, _ in written.values())
    check(total["parameters"] == parameters, f"{path}: total parameters {total['parameters']} != {parameters}")
    print(f"ok: {path}: {len(written)} tensors")


def expect_refused(path, why):
    code, _, stderr = inspect(path)
    check(code != 0, f"{path} ({why}): lowbit inspect accepted it")
    check(os.path.basename(path) in stderr and "safetensors" in stderr,
          f"{path} ({why}): the message does not name the file: {stderr.strip()}")
    if code != 0:
        print(f"ok: refused {os.path.basename(path)} ({why}): {stderr.strip().splitlines()[-1] if stderr else ''}")


os.makedirs(args.work, exist_ok=True)
rng = np.random.default_rng(20240611)

# 1. Every dtype in every shape, with metadata, in one file.
written = {}
for dtype in DTYPES:
    for shape in SHAPES:
        written[f"t.{dtype.lower()}.{'x'.join(map(str, shape)) or 'scalar'}"] = (dtype, shape,
                                                                               random_bytes(rng, dtype, shape))
blob = serialize(written, metadata={"format": "pt", "note": "h\u00e9llo"})
every = os.path.join(args.work, "roundtrip_every_dtype.safetensors")
with open(every, "wb") as f:
    f.write(blob)
expect_listing(every, written)

# 2. A sharded folder with a Hugging Face index.
folder = os.path.join(args.work, "roundtrip_sharded")
os.makedirs(folder, exist_ok=True)
for old in os.listdir(folder):
    os.remove(os.path.join(folder, old))
shards = {"model-00001-of-00002.safetensors": ["embed.weight", "layers.0.w"],
          "model-00002-of-00002.safetensors": ["layers.1.w", "norm.weight"]}
sharded, shard_of = {}, {}
for shard, names in shards.items():
    part = {}
    for i, name in enumerate(names):
        dtype = ["BF16", "F32"][i % 2]
        part[name] = (dtype, (3, 4), random_bytes(rng, dtype, (3, 4)))
        shard_of[name] = shard
    with open(os.path.join(folder, shard), "wb") as f:
        f.write(serialize(part))
    sharded.update(part)
with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": sum(len(d) for _, _, d in sharded.values())}, "weight_map": shard_of}, f)
expect_listing(folder, sharded, shard_of)

# 3. Files the package itself would refuse: lowbit must refuse them too, naming the file.
bad = os.path.join(args.work, "roundtrip_bad")
os.makedirs(bad, exist_ok=True)


def write_bad(name, content):
    path = os.path.join(bad, name)
    with open(path, "wb") as f:
        f.write(content)
    return path


def raw(header, data=b""):
    h = header.encode()
    return struct.pack("<Q", len(h)) + h + data


cases = {
    "truncated.safetensors": (blob[:len(blob) - 3], "3 bytes cut off the end"),
    "header_too_long.safetensors": (struct.pack("<Q", 1000) + b"{}", "header longer than the file"),
    "overlap.safetensors": (raw('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                                '"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', bytes(12)), "overlap"),
    "size_mismatch.safetensors": (raw('{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}}', bytes(20)),
                                  "byte count mismatch"),
}
for name, (content, why) in cases.items():
    path = write_bad(name, content)
    try:  # confirm the package refuses it as well, so the case is a real one
        safetensors.deserialize(content)
        check(False, f"{name}: the safetensors package accepts it; the case is wrong")
    except Exception:
        pass
    expect_refused(path, why)

if failures:
    print(f"{len(failures)} failure(s)")
    sys.exit(1)
print("all ok")
