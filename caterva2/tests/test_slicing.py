"""Unit tests: selection parsing and planning, chunk geometry, chunk assembly and streams."""
import io
import math

import blosc2
import httpx
import numpy as np
import pytest

from caterva2 import chunks as geometry
from caterva2 import cli, http_data, slicing, wire
from caterva2.assembly import ChunkAssembler


@pytest.mark.parametrize("text, key", [
    (None, ()), ("", ()), ("[]", ()), ("3", (3,)), ("-1", (-1,)), (":12", (slice(None, 12),)),
    ("[1,2,3]", (1, 2, 3)), (" 0:10 , 5 ", (slice(0, 10), 5)), ("::2", (slice(None, None, 2),)),
    ("1:9:-2", (slice(1, 9, -2),)), ("1,", (1,)), ("[0:2, 3,]", (slice(0, 2), 3)),
    ("...", (Ellipsis,)), ("..., 2", (Ellipsis, 2)), ("1, ..., ::2", (1, Ellipsis, slice(None, None, 2))),
])
def test_parse_slice(text, key):
    assert slicing.parse_slice(text) == key


@pytest.mark.parametrize("text, parts", [
    ("foo/a.b2nd", ("foo/a.b2nd", None)), ("foo/a.b2nd[1:3, ::5]", ("foo/a.b2nd", "1:3, ::5")),
    ("foo/b[1].txt", ("foo/b[1].txt", None)), ("foo/b[1].txt[0:3]", ("foo/b[1].txt", "0:3")),
])
def test_cli_splits_a_dataset_from_its_selection(text, parts):
    assert cli.split_selection(text) == parts


@pytest.mark.parametrize("text", ["foo/a.b2nd[1:3", "foo/a.b2nd[1:3]]", "foo/a.b2nd[",
                                  "foo/b[1].txt[0:"])
def test_cli_says_an_unclosed_selection_is_malformed(text):
    with pytest.raises(slicing.SelectionError, match="malformed selection"):
        cli.split_selection(text)


def test_cli_json_keeps_the_field_names_of_structured_arrays():
    inner = np.dtype([("x", "int8"), ("y", "int8")])
    data = np.array([(1, (2, 3), [4, 5]), (6, (7, 8), [9, 10])],
                    dtype=[("a", "int32"), ("p", inner), ("v", "float32", (2,))])
    rows = [{"a": 1, "p": {"x": 2, "y": 3}, "v": [4.0, 5.0]},
            {"a": 6, "p": {"x": 7, "y": 8}, "v": [9.0, 10.0]}]
    assert cli.jsonable_data(data) == rows
    assert cli.jsonable_data(data[1]) == rows[1]  # (a NumPy scalar: np.void)
    assert cli.jsonable_data(data.reshape(2, 1)) == [[rows[0]], [rows[1]]]


@pytest.mark.parametrize("text", ["a", "1:2:3:4", "1;2", "1.5", "(1,2)", "....", ",", "1,,2",
                                  "1,2,,", ".. .", "1:..."])
def test_parse_slice_rejects_malformed_text(text):
    with pytest.raises(slicing.SelectionError, match="malformed"):
        slicing.parse_slice(text)


@pytest.mark.parametrize("key", [3, slice(1, 5), (1, slice(None, None, 3)), slice(None, -2, -4),
                                 (slice(None),), (Ellipsis, 1), (2, Ellipsis)])
def test_format_slice_round_trips(key):
    normal = key if isinstance(key, tuple) else (key,)
    assert slicing.parse_slice(slicing.format_slice(key)) == normal


def test_numpy_integers_select_like_ints():
    key = (np.int64(3), slice(np.int32(1), np.uint8(9), np.int16(2)))
    assert slicing.as_key(key) == (3, slice(1, 9, 2))
    assert slicing.format_slice(key) == "3,1:9:2"


@pytest.mark.parametrize("key, message", [
    ([1, 2], "not \\[1, 2\\]"), (np.array([0, 1]), "not array"), (np.ones(50, bool), "not ndarray"),
    (1.5, "not 1.5"), ((0, 2.0), "not 2.0"), (slice(1.5, 3), "slice bounds must be integers"),
    ("3", "not '3'"), (True, "True \\(a boolean\\)"), ((slice(None), None), "None \\(a new axis\\)"),
    ((Ellipsis, 1, Ellipsis), "only one '...'"), ("..., ...", "only one '...'"),
])
def test_selections_beyond_basic_indexing_are_refused_by_name(key, message):
    """Lists, arrays, masks, floats, booleans and new axes: a clear error naming the item,
    raised before anything is asked (never a silent int(), as 1.5 -> 1 or True -> 1 were)."""
    parse = slicing.parse_slice if isinstance(key, str) and "..." in key else slicing.as_key
    with pytest.raises(slicing.SelectionError, match=message) as err:
        parse(key)
    assert isinstance(err.value, IndexError)  # as NumPy raises for bad indices


SHAPE = (7, 11)
KEYS = [(), (3,), (-1, 2), (slice(2, 5),), (slice(None, None, 3), slice(1, 10, 4)),
        (slice(None, None, -2),), (slice(6, 1, -3), slice(None, None, -1)),
        (slice(5, 2),), (slice(20, 30), 0), (slice(-3, None), -11),
        (Ellipsis,), (Ellipsis, 3), (2, Ellipsis), (1, Ellipsis, slice(None, None, 2)),
        (Ellipsis, slice(1, 3), 4)]


@pytest.mark.parametrize("key", KEYS)
def test_plan_selects_like_numpy(key):
    a = np.arange(77).reshape(SHAPE)
    plan = slicing.plan(key, SHAPE)
    got = a[plan.region][plan.within]
    np.testing.assert_array_equal(got, a[key])
    assert got.shape == plan.result_shape


@pytest.mark.parametrize("key, message", [
    ((7,), "out of range"), ((0, -12), "out of range"), ((1, 2, 3), "too many indices"),
    ((slice(None, None, 0),), "step cannot be zero")])
def test_plan_rejects_selections_that_do_not_fit(key, message):
    with pytest.raises(slicing.SelectionError, match=message):
        slicing.plan(key, SHAPE)


def test_chunks_in_region_lists_exactly_the_touched_chunks():
    shape, chunks = (10, 20), (5, 5)  # a 2 x 4 grid of chunks
    assert geometry.chunks_in_region(shape, chunks, (slice(0, 10), slice(0, 20))) == list(range(8))
    assert geometry.chunks_in_region(shape, chunks, (slice(4, 6), slice(9, 11))) == [1, 2, 5, 6]
    assert geometry.chunks_in_region(shape, chunks, (slice(3, 3), slice(0, 20))) == []
    assert geometry.chunks_in_region((), (), ()) == [0]


@pytest.mark.parametrize("key", [
    (slice(None, None, 1000), slice(None, None, 1000)), (slice(None, None, 3), 7),
    (slice(None, None, -700), slice(1, 1999, 501)), (slice(1990, 5, -400), slice(None)),
    (5, slice(2, 3)), (slice(None, None, 499), slice(None, None, 500)),
])
def test_chunks_of_a_stepped_selection_are_only_those_holding_selected_elements(key):
    shape, chunks = (2000, 1999), (500, 400)
    plan = slicing.plan(key, shape)
    rows, cols = np.indices(shape)
    grid = geometry.chunk_grid(shape, chunks)
    holding = np.ravel_multi_index((rows // 500, cols // 400), grid)[key]
    want = sorted(set(np.ravel(holding).tolist()))
    assert sorted(geometry.chunks_in_region(shape, chunks, plan.region, plan.within)) == want


@pytest.mark.parametrize("shape, chunks, blocks, dtype", [
    ((10, 20), (5, 5), (2, 3), "uint16"),
    ((3, 4, 5), (2, 3, 4), (2, 2, 2), "float32"),
    ((1000,), (100,), (10,), "S6"),
    ((13, 7), (4, 7), (3, 2), "complex128"),
])
def test_chunk_assembler_rebuilds_any_region_from_stored_chunks(shape, chunks, blocks, dtype):
    rng = np.random.default_rng(1)
    a = (rng.integers(0, 100, size=shape)).astype(dtype)
    arr = blosc2.asarray(a, chunks=chunks, blocks=blocks)
    region = tuple(slice(1, max(2, s - 1)) for s in shape)
    asm = ChunkAssembler(shape, chunks, blocks, np.dtype(dtype), region)
    for n in geometry.chunks_in_region(shape, chunks, region):
        asm.add(n, arr.schunk.get_chunk(n))
    np.testing.assert_array_equal(asm.out, a[region])



def test_chunk_assembler_copies_whole_blocks_and_parts_of_blocks_alike():
    # Regions starting and ending inside blocks, on block edges, on chunk edges, whole.
    shape, chunks, blocks = (23, 17, 9), (10, 8, 9), (4, 3, 2)
    a = np.arange(math.prod(shape), dtype="i4").reshape(shape)
    arr = blosc2.asarray(a, chunks=chunks, blocks=blocks)
    rng = np.random.default_rng(7)
    regions = [tuple(slice(0, s) for s in shape), (slice(4, 20), slice(3, 6), slice(2, 4)),
               (slice(5, 6), slice(16, 17), slice(8, 9))]
    for _ in range(30):
        regions.append(tuple(slice(lo, rng.integers(lo + 1, s + 1))
                             for s in shape for lo in [int(rng.integers(0, s))]))
    for region in regions:
        asm = ChunkAssembler(shape, chunks, blocks, a.dtype, region)
        for n in geometry.chunks_in_region(shape, chunks, region):
            asm.add(n, arr.schunk.get_chunk(n))
        np.testing.assert_array_equal(asm.out, a[region])
    scalar = blosc2.asarray(np.array(5.5))
    asm = ChunkAssembler((), (), (), np.dtype("f8"), ())
    asm.add(0, scalar.schunk.get_chunk(0))
    assert asm.out.shape == () and asm.out == 5.5

class Trickle(io.RawIOBase):
    """A body that arrives a few bytes at a time, as from a socket."""

    def __init__(self, data: bytes):
        self.data = io.BytesIO(data)

    def readinto(self, buffer) -> int:
        return self.data.readinto(memoryview(buffer)[:7])


def record(nchunk: int, chunk: bytes) -> bytes:
    return wire.record(nchunk, chunk)


def test_chunk_stream_records_are_rebuilt_from_any_pieces():
    data = record(3, b"abc") + record(9, b"") + record(4, b"x" * 100)
    got = [(n, bytes(c)) for n, c in http_data.records(Trickle(data), max_length=100)]
    assert got == [(3, b"abc"), (9, b""), (4, b"x" * 100)]


@pytest.mark.parametrize("cut", [3, 16, 17, 20])
def test_a_chunk_stream_cut_short_is_an_error(cut):
    data = record(3, b"abc") + record(4, b"x" * 100)
    with pytest.raises(httpx.RemoteProtocolError, match="cut short"):
        list(http_data.records(Trickle(data[:len(record(3, b"abc")) + cut]), max_length=100))


def test_a_chunk_stream_ended_by_an_error_record_raises_its_reason():
    data = record(3, b"abc") + wire.error_record("the publisher of 'x' is unreachable")
    got = []
    with pytest.raises(wire.AnswerCut, match="^the publisher of 'x' is unreachable$"):
        for n, chunk in http_data.records(Trickle(data), max_length=100):
            got.append((n, bytes(chunk)))
    assert got == [(3, b"abc")]
    assert len(wire.error_record("é" * 10_000)) == wire.RECORD_HEADER_SIZE + wire.MAX_REASON
    with pytest.raises(httpx.RemoteProtocolError, match="at most"):  # (no huge reasons)
        list(http_data.records(Trickle(wire.record_header(wire.STREAM_ERROR, 1 << 40, 0)), 100))


def test_an_oversized_chunk_record_is_refused_before_any_allocation():
    with pytest.raises(httpx.RemoteProtocolError, match="at most"):
        list(http_data.records(Trickle(wire.record_header(0, 1 << 60, 0)), max_length=1000))


def test_chunk_assembler_refuses_a_chunk_larger_than_the_layout_it_was_given():
    # A chunk of a dataset that changed chunking since the client's metadata (or from a
    # misbehaving server) must be an error, never a decompression past the buffer.
    big = blosc2.asarray(np.arange(10_000, dtype="f8"), chunks=(1000,), blocks=(100,))
    asm = ChunkAssembler((10_000,), (100,), (10,), np.dtype("f8"), (slice(0, 10_000),))
    with pytest.raises(ValueError, match="it changed; read again"):
        asm.add(0, big.schunk.get_chunk(0))


def test_a_chunk_that_does_not_match_its_digest_is_refused():
    good = wire.record(3, b"abc")
    flipped = good[:-1] + bytes([good[-1] ^ 1])  # one bit of the chunk, on the way
    with pytest.raises(wire.DigestMismatch, match="chunk 3 does not match its digest"):
        list(wire.read_records(Trickle(flipped), max_length=100))
    with pytest.raises(httpx.RemoteProtocolError, match="does not match its digest"):
        list(http_data.records(Trickle(flipped), max_length=100))
