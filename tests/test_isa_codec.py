"""The ISA simulator's word codec (``sim.isa_sim._Codec``: numpy views and shifts over raw
buffer words) against ``hw.isa``'s (``unpack_words`` / ``pack_words``) on random words of every
buffer layout of several chip configurations: every leaf read the same, scalar leaves through
their table (``tail`` / ``tail_table``), words packed byte for byte the same, and out-of-range
values refused with ``pack_words``' error. Random tests print their seed; replay with
ISA_SEED=<seed>.
"""

import os

import numpy as np
import pytest
from amaranth.lib import data

from hw.isa import Buf, leaf_fields, pack_words, unpack_words, word_bytes, word_layout
from hw.params import ChipParams
from sim.isa_sim import _Codec

SEED = int(os.environ.get("ISA_SEED", np.random.SeedSequence().entropy % 2**32))
CONFIGS = {"16x16": ChipParams(rows=16, cols=16), "4x8": ChipParams(rows=4, cols=8),
           "16x64": ChipParams(rows=16, cols=64), "8x6": ChipParams(rows=8, cols=6)}


@pytest.fixture
def rng(request):
    seed = (SEED + hash(request.node.name)) % 2**32
    print(f"ISA_SEED={SEED} (test seed {seed})")
    return np.random.default_rng(seed)


def _raw(layout, rng, n):
    raw = rng.integers(0, 256, (n, word_bytes(layout)), dtype=np.uint8)
    rem = data.Layout.cast(layout).size % 8
    if rem:
        raw[:, -1] &= (1 << rem) - 1
    return raw


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("buf", list(Buf), ids=[b.name for b in Buf])
def test_codec_reads_and_packs_as_hw_isa(rng, name, buf):
    layout = word_layout(CONFIGS[name], buf)
    codec = _Codec(layout)
    raw = _raw(layout, rng, 300)
    want = unpack_words(layout, raw)
    for path in want:
        assert np.array_equal(codec.get(raw, path), want[path]), path
        assert np.array_equal(codec.get(raw.reshape(3, 100, -1), path),
                              want[path].reshape(3, 100, *want[path].shape[1:])), path
    scalars = [p for p, _, _, _, count in leaf_fields(layout) if count == 1
               and codec.plan[p][0][0] == "scalar"]
    if scalars:
        for path, got in zip(scalars, codec.get_scalars(raw, scalars), strict=True):
            assert np.array_equal(got, want[path]), path
        tail = codec.tail(raw)
        if tail is not None:
            for path in scalars:
                assert np.array_equal(codec.tail_table(path)[tail], want[path]), path
    # pack: one union member at a time (as pack_words takes them)
    members = {}
    for path in want:
        members.setdefault(path.split(".")[0] if "." in path else "", []).append(path)
    for paths in members.values():
        fields = {p: want[p] for p in paths}
        assert np.array_equal(codec.pack(fields), pack_words(layout, fields))
        off, width, sgn = next((o, w, s) for p, o, w, s, _ in leaf_fields(layout)
                               if p == paths[0])
        bad = dict(fields)
        bad[paths[0]] = fields[paths[0]].copy()
        bad[paths[0]].flat[7] = (1 << (width - 1)) if sgn else (1 << width)
        with pytest.raises(ValueError, match=f"field {paths[0]} has values"):
            codec.pack(bad)
