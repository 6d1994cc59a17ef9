"""HSA's chunk -> pairs index (`hsa_triton.chunk_query_index`, built by every compiled step of the
triton backend) under Inductor, on the CPU.

Inductor without pytorch PR 184043 (torch 2.11, on the GPU machine; 2.13 has the fix) lowers
`searchsorted` by reading the strides of its sorted sequence, which a slice of a computed tensor
does not have there. The index searched `key_items[1:]`, and compiled HSA training on an H100
failed at its first step with `InductorError: NotImplementedError: SliceView`. Inductor's CPU
backend has no bucketize lowering (it calls aten), so the failure itself only shows on a GPU; here
the test pins its cause in the graph Inductor is given: no searchsorted reads a slice."""

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from zoo.kernels.hsa_triton import chunk_query_index

SLICES = {torch.ops.aten.slice.Tensor, torch.ops.aten.narrow.default, torch.ops.aten.as_strided.default}


def _ids() -> torch.Tensor:
    # the failing step: 128-token rows of 2 chunks of 64, top-8 clipped to the 2 chunks there are
    g = torch.Generator().manual_seed(0)
    return torch.randint(-1, 2, (2, 128, 1, 2), generator=g)


def test_chunk_query_index_searches_no_slice():
    graph = make_fx(lambda ids: tuple(chunk_query_index(ids, 2))[:-1])(_ids()).graph
    searches = [n for n in graph.nodes if n.target == torch.ops.aten.searchsorted.Tensor]
    assert searches
    for n in searches:
        seq = n.args[0]
        assert seq.target not in SLICES, f"searchsorted over {seq.target}: NotImplementedError: SliceView on torch 2.11"


def test_compiled_chunk_query_index_equals_eager(one_thread):
    ids = _ids()
    want = chunk_query_index(ids, 2)
    got = torch.compile(chunk_query_index)(ids, 2)
    assert got.n_chunks == want.n_chunks
    for name, a, b in zip(want._fields[:-1], got[:-1], want[:-1]):
        assert a.dtype == b.dtype and torch.equal(a, b), name
