"""The checkpoint checksum and the finiteness check: the NumPy path for states in host memory
gives what the compiled reduction gives (every dtype a state can hold, sharded arrays,
padding rows), a changed bit changes it, and a CPU state never compiles anything for it."""

from __future__ import annotations

import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrec.train import _checkpoint, _state
from jaxrec.train._checkpoint import state_checksum
from jaxrec.train._state import non_finite_leaves


def _compiled_checksum(tree) -> str:
    """The compiled reduction's checksum, computed independently of the host path."""
    sums = jax.device_get(_checkpoint._checksums(jax.tree.leaves(tree)))
    return "".join(f"{int(a):08x}{int(b):08x}" for a, b in sums)


def _every_dtype_tree():
    rng = np.random.default_rng(0)
    return {
        "f32": rng.standard_normal((300, 7)).astype(np.float32),
        "specials": np.array([np.nan, -0.0, 0.0, np.inf, -np.inf, 1e-45], np.float32),
        "step": np.array(12, np.int32),
        "words": rng.integers(0, 2**32, (9,), dtype=np.uint32),
        "i8": rng.integers(-128, 128, (5,), dtype=np.int8),
        "mask": rng.random(11) > 0.5,
        "f16": rng.standard_normal(13).astype(np.float16),
        "bf16": jnp.asarray(rng.standard_normal(17), jnp.bfloat16),
        "f64": rng.standard_normal((3, 4)),  # JAX holds it as float32 (64-bit mode off)
        "typed_key": jax.random.key(3),
        "raw_key": jax.random.PRNGKey(4),
        "empty": np.zeros((0, 3), np.float32),
        "device": jnp.asarray(rng.standard_normal((64, 5)), jnp.float32),
        # more words than one chunk of the host sum (2^20), so chunks are combined
        "long": rng.standard_normal((1 << 20) + 123).astype(np.float32),
    }


def test_host_checksum_equals_the_compiled_reduction_for_every_dtype():
    tree = _every_dtype_tree()
    assert state_checksum(tree) == _compiled_checksum(tree)
    for name, leaf in tree.items():  # leaf by leaf, so a mismatch names its dtype
        assert state_checksum({name: leaf}) == _compiled_checksum({name: leaf}), name


def test_host_checksum_equals_the_compiled_reduction_for_64_bit_leaves_in_x64_mode():
    rng = np.random.default_rng(2)
    with jax.enable_x64():  # 8-byte leaves stay 8 bytes: two words each, in XLA's order
        tree = {"f64": rng.standard_normal((5, 3)), "i64": rng.integers(-2**40, 2**40, (7,)),
                "scalar": np.array(3, np.int64)}
        assert state_checksum(tree) == _compiled_checksum(tree)


def _words_by_hand(leaf) -> list[int]:
    """A leaf's uint32 words, element by element in row-major order, from Python's ``struct``
    (little-endian bytes, as the checksum's docstring describes them): 4-byte types are their
    bits, 2-byte floats their 16 bits zero-extended, booleans 0/1, 8-byte types two words each
    (low word first); a float64 leaf outside 64-bit mode is first rounded to float32 (as JAX holds
    it). One-byte integers are the element's VALUE mod 2^32 (int8 -1 -> 0xFFFFFFFF, sign-extended,
    not its 8 bits 0xFF): that is what both the host and the compiled path do."""
    leaf = np.asarray(leaf)
    x64 = jax.config.jax_enable_x64
    words = []
    for value in leaf.ravel().tolist():  # Python floats/ints/bools
        kind, size = leaf.dtype.kind, leaf.dtype.itemsize
        if kind == "b":
            words.append(int(value))
        elif size == 1:
            words.append(value % 2**32)
        elif kind == "f" and size == 2:
            words.append(struct.unpack("<H", struct.pack("<e", value))[0])
        elif kind == "i" and size == 4:
            words.append(struct.unpack("<I", struct.pack("<i", value))[0])
        elif kind == "f" and (size == 4 or not x64):
            words.append(struct.unpack("<I", struct.pack("<f", value))[0])
        elif kind == "f":
            words.extend(struct.unpack("<2I", struct.pack("<d", value)))
        elif kind == "i" and size == 8 and x64:
            words.extend(struct.unpack("<2I", struct.pack("<q", value)))
        else:
            raise AssertionError(f"no hand reference for {leaf.dtype}")
    return words


def _checksum_by_hand(tree) -> str:
    """The documented formula with Python integers, leaf by leaf in ``jax.tree.leaves`` order:
    ``sum_i w_i (2i + 1)`` and ``sum_i rotl(w_i, 13) (i * 0x9E3779B1 | 1)``, both mod 2^32, each
    leaf as 16 hex digits."""
    out = []
    for leaf in jax.tree.leaves(tree):
        first = second = 0
        for i, w in enumerate(_words_by_hand(leaf)):
            rotl = ((w << 13) | (w >> 19)) & 0xFFFFFFFF
            first = (first + w * (2 * i + 1)) % 2**32
            second = (second + rotl * (((i * 0x9E3779B1) % 2**32) | 1)) % 2**32
        out.append(f"{first:08x}{second:08x}")
    return "".join(out)


def test_checksum_of_a_small_tree_is_the_documented_formula_computed_by_hand():
    rng = np.random.default_rng(5)
    tree = {"f32": rng.standard_normal((4, 3)).astype(np.float32),
            "specials": np.array([np.nan, -0.0, np.inf, -np.inf, 1e-45, 3.0e38], np.float32),
            "i8": np.array([-128, -1, 0, 1, 127], np.int8),
            "i32": np.array([-7, 2**31 - 1, -2**31], np.int32),
            "f16": rng.standard_normal(5).astype(np.float16),
            "mask": np.array([True, False, True]),
            "f64": rng.standard_normal(4)}  # float32 outside 64-bit mode
    expected = _checksum_by_hand(tree)
    assert len(expected) == 16 * len(tree)
    assert state_checksum(tree) == expected
    assert state_checksum({k: jnp.asarray(v) for k, v in tree.items()}) == expected  # as CPU jax.Arrays
    assert _compiled_checksum(tree) == expected
    with jax.enable_x64():  # 8-byte leaves: two words per element, low word first
        wide = {"f64": rng.standard_normal((2, 3)), "i64": np.array([-2**40 - 3, 5, 2**62 + 1], np.int64)}
        expected = _checksum_by_hand(wide)
        assert state_checksum(wide) == expected
        assert _compiled_checksum(wide) == expected


def test_host_checksum_of_a_sharded_padded_table_is_its_logical_rows_checksum():
    devices = np.array(jax.devices()[:4])
    if devices.size < 4:
        pytest.skip("needs 4 devices (tests/conftest.py forces 4 CPU devices)")
    mesh = Mesh(devices, ("data",))
    logical = np.random.default_rng(1).standard_normal((10, 8)).astype(np.float32)
    padded = np.concatenate([logical, np.zeros((2, 8), np.float32)])  # 12 rows: 3 per device
    sharded = jax.device_put(padded, NamedSharding(mesh, PartitionSpec("data")))
    assert len(sharded.addressable_shards) == 4
    assert state_checksum({"t": sharded}) == state_checksum({"t": logical}) == _compiled_checksum({"t": sharded})


def test_one_changed_bit_changes_the_checksum():
    tree = _every_dtype_tree()
    before = state_checksum(tree)
    flipped = tree["f32"].copy()
    flipped.view(np.uint32)[123, 4] ^= np.uint32(1 << 7)
    assert state_checksum({**tree, "f32": flipped}) != before
    swapped = tree["f32"].copy()
    swapped[[0, 1]] = swapped[[1, 0]]  # same values, other places
    assert state_checksum({**tree, "f32": swapped}) != before


def test_cpu_states_compile_nothing_for_the_checks(monkeypatch):
    def refuse(*_):
        raise AssertionError("the compiled reduction ran for a state in host memory")

    monkeypatch.setattr(_checkpoint, "_checksums", refuse)
    monkeypatch.setattr(_state, "_finite_leaves", refuse)
    tree = _every_dtype_tree()
    assert len(state_checksum(tree)) == 16 * len(jax.tree.leaves(tree))
    assert non_finite_leaves({k: v for k, v in tree.items() if k != "specials"}) == []


@pytest.mark.parametrize("where", ["numpy", "device"])
def test_non_finite_leaves_names_them_on_either_path(where, monkeypatch):
    put = np.asarray if where == "numpy" else jnp.asarray
    tree = {"params": {"a": put(np.ones(3, np.float32)), "b": put(np.array([1.0, np.nan], np.float32)),
                       "c": put(np.array([[np.inf]], np.float32))},
            "step": put(np.array(3, np.int32))}
    expected = ["params['b']", "params['c']"]
    assert non_finite_leaves(tree) == expected
    # The compiled path (an accelerator's arrays take it) names the same leaves.
    monkeypatch.setattr(_state, "host_view", lambda leaf: None)
    assert non_finite_leaves(tree) == expected
