"""vLLM's ``_C::weak_ref_tensor``, which its graph capture calls and the empty build lacks: a
view of the same memory that does not own it."""

from __future__ import annotations

import torch

from vllm_ascend import kernels


def test_weak_ref_views_the_memory_without_owning_it():
    kernels.load()
    from vllm.utils.torch_utils import weak_ref_tensor

    base = torch.arange(24.0).view(4, 6)
    view = base[1:, 2:5]  # offset and strides of a real view
    storage = base.untyped_storage()
    uses = torch._C._storage_Use_Count(storage._cdata)
    weak = weak_ref_tensor(view)
    assert torch._C._storage_Use_Count(storage._cdata) == uses  # no new owner
    assert weak.untyped_storage().data_ptr() == storage.data_ptr()
    assert (weak.shape, weak.stride(), weak.storage_offset()) == (
        view.shape, view.stride(), view.storage_offset())
    base.mul_(2)
    assert torch.equal(weak, view)
    weak.zero_()
    assert torch.equal(base[1:, 2:5], torch.zeros(3, 3))
    # vLLM passes empty tensors and non-tensors through untouched.
    empty = torch.empty(0)
    assert weak_ref_tensor(empty) is empty and weak_ref_tensor("layer") == "layer"
