#!/usr/bin/env python3
"""Writes the safetensors golden files that tests/io/safetensors_golden_test.cpp reads.

The files are written by the Python `safetensors` package itself (not by lowbit), so the C++ test checks
our reader against the reference writer, and our writer against its exact bytes. Contents are fixed by a
seed; rerunning this script reproduces the committed files bit for bit (safetensors 0.8.0, numpy 2.x),
except golden_f16_metadata.safetensors, whose three metadata keys the package writes in hash-map order
(the sidecar does not change). The files with at most one metadata key are deterministic, and the C++
test requires our writer to reproduce those byte for byte.

    python3 -m pip install safetensors numpy
    python3 tests/data/make_safetensors_golden.py          # writes tests/data/safetensors/

Sidecar golden.json lists, per file, the metadata and each tensor's name, safetensors dtype, shape,
data_offsets and its bytes as hex: everything the C++ test compares, exactly.
"""
import argparse
import json
import os

import numpy as np
import safetensors

SEED = 20240611


def spec(dtype, shape, data):
    """One tensor for safetensors.serialize: `data` is its raw little-endian bytes."""
    data = bytes(data)
    if hasattr(safetensors, "TensorSpec"):  # safetensors >= 0.7 takes a pointer; keep `data` alive meanwhile
        buffer = np.frombuffer(data, dtype=np.uint8) if data else np.zeros(1, np.uint8)
        return safetensors.TensorSpec(dtype=dtype, shape=list(shape), data_ptr=buffer.ctypes.data,
                                      data_len=len(data)), buffer
    return {"dtype": dtype, "shape": list(shape), "data": data}, data


def f32_to_bf16_bytes(values):
    """Round-to-nearest-even fp32 -> bf16, as raw uint16 little-endian bytes (numpy has no bfloat16)."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype("<u2").tobytes()


def build(rng):
    """{file name: (metadata or None, {tensor name: (safetensors dtype for serialize, shape, bytes)})}"""
    normal = lambda shape: rng.standard_normal(shape).astype(np.float32)
    files = {}
    files["golden_f32.safetensors"] = (None, {
        "weight": ("float32", (3, 5), normal((3, 5)).astype("<f4").tobytes()),
        "bias": ("float32", (5,), normal((5,)).astype("<f4").tobytes()),
    })
    files["golden_f16_metadata.safetensors"] = ({"format": "pt", "note": "h\u00e9llo \u2713", "empty": ""}, {
        "model.embed.weight": ("float16", (4, 3), normal((4, 3)).astype("<f2").tobytes()),
        "model.norm.weight": ("float16", (3,), np.array([1.0, -0.5, 65504.0], "<f2").tobytes()),
    })
    files["golden_bf16.safetensors"] = ({"dtype": "bfloat16"}, {
        "layers.0.w": ("bfloat16", (2, 7), f32_to_bf16_bytes(normal((2, 7)))),
        "layers.0.scale": ("float32", (2,), normal((2,)).astype("<f4").tobytes()),
        "special": ("bfloat16", (4,), f32_to_bf16_bytes([np.inf, -np.inf, 0.0, -0.0])),
    })
    ints = lambda dtype, shape: rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, size=shape,
                                             dtype=dtype, endpoint=True).astype(np.dtype(dtype).newbyteorder("<"))
    files["golden_all_dtypes.safetensors"] = ({"seed": str(SEED)}, {
        "f64": ("float64", (2, 2), rng.standard_normal((2, 2)).astype("<f8").tobytes()),
        "i64": ("int64", (2,), ints(np.int64, (2,)).tobytes()),
        "u64": ("uint64", (3,), ints(np.uint64, (3,)).tobytes()),
        "f32.rank4": ("float32", (1, 2, 1, 3), normal((1, 2, 1, 3)).astype("<f4").tobytes()),
        "f32.scalar": ("float32", (), np.array(3.25, "<f4").tobytes()),
        "f32.empty": ("float32", (0, 3), b""),
        "i32": ("int32", (2, 3), ints(np.int32, (2, 3)).tobytes()),
        "u32": ("uint32", (4,), ints(np.uint32, (4,)).tobytes()),
        "i16": ("int16", (2, 2), ints(np.int16, (2, 2)).tobytes()),
        "u16": ("uint16", (3,), ints(np.uint16, (3,)).tobytes()),
        "f8e4m3": ("float8_e4m3fn", (5,), bytes(rng.integers(0, 256, 5, dtype=np.uint8))),
        "f8e5m2": ("float8_e5m2", (5,), bytes(rng.integers(0, 256, 5, dtype=np.uint8))),
        "i8": ("int8", (3, 3), ints(np.int8, (3, 3)).tobytes()),
        "u8": ("uint8", (5,), ints(np.uint8, (5,)).tobytes()),
        "u8.empty": ("uint8", (2, 0, 2), b""),
        "bool": ("bool", (7,), bytes(rng.integers(0, 2, 7, dtype=np.uint8))),
    })
    return files


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "safetensors"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(SEED)
    sidecar = {"generator": "tests/data/make_safetensors_golden.py", "safetensors": safetensors.__version__,
               "seed": SEED, "files": []}
    for file_name, (metadata, tensors) in build(rng).items():
        specs, keep_alive = {}, []
        for name, (dtype, shape, data) in tensors.items():
            specs[name], buffer = spec(dtype, shape, data)
            keep_alive.append(buffer)
        blob = safetensors.serialize(specs, metadata=metadata)
        with open(os.path.join(args.out, file_name), "wb") as f:
            f.write(blob)
        # Read back what the package wrote (dtype names and offsets as it spelled them).
        header_len = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8:8 + header_len])
        entries = []
        for name in sorted(tensors):
            begin, end = header[name]["data_offsets"]
            assert blob[8 + header_len + begin:8 + header_len + end] == tensors[name][2], name
            entries.append({"name": name, "dtype": header[name]["dtype"], "shape": header[name]["shape"],
                            "data_offsets": [begin, end], "hex": tensors[name][2].hex()})
        sidecar["files"].append({"file": file_name, "bytes": len(blob), "metadata": metadata or {},
                                 "tensors": entries})
    with open(os.path.join(args.out, "golden.json"), "w", encoding="utf-8") as f:
        json.dump(sidecar, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
