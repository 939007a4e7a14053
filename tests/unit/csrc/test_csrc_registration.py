"""Every _C_ascend op has a CPU kernel and a Meta function; stale/missing builds are errors."""

import importlib

import pytest
import torch

from vllm_ascend.kernels import extension


def test_schemas_match_expected(C):
    assert extension.registered_schemas() == extension.EXPECTED_SCHEMAS


@pytest.mark.parametrize("name", sorted(extension.EXPECTED_SCHEMAS))
def test_cpu_and_meta_kernels_registered(C, name):
    qualname = f"_C_ascend::{name}"
    for key in ("CPU", "Meta"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key), (qualname, key)


def test_every_registered_op_is_expected(C):
    for name in extension.registered_schemas():
        assert name in extension.EXPECTED_SCHEMAS


def test_build_info(C):
    info = extension.build_info()
    assert info["with_cann"] is False  # no CANN on CPU CI hosts
    assert info["cpu_kernel_isa"] in ("DEFAULT", "AVX2")


@pytest.fixture
def fresh_loader(monkeypatch):
    monkeypatch.setattr(extension, "_module", None)
    yield


def test_stale_schema_is_a_clear_error(C, fresh_loader, monkeypatch):
    expected = dict(extension.EXPECTED_SCHEMAS)
    expected["rotary_embedding"] = expected["rotary_embedding"].replace("bool is_neox", "int x")
    expected["some_new_op"] = "_C_ascend::some_new_op(Tensor x) -> Tensor"
    monkeypatch.setattr(extension, "EXPECTED_SCHEMAS", expected)
    with pytest.raises(extension.ExtensionError) as err:
        extension.load(require_npu_kernels=False)
    msg = str(err.value)
    assert "stale build" in msg and "some_new_op" in msg and "rotary_embedding" in msg
    assert "pip install --no-build-isolation -e ." in msg and "build.log" in msg


def test_missing_extension_is_a_clear_error(C, fresh_loader, monkeypatch):
    real = importlib.import_module

    def fake_import(name, *args, **kwargs):
        if name == extension.MODULE:
            raise ImportError("no such file")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(extension.importlib, "import_module", fake_import)
    with pytest.raises(extension.ExtensionError, match="cannot be imported") as err:
        extension.load(require_npu_kernels=False)
    assert "make install" in str(err.value)


def test_npu_host_requires_cann_build(C, fresh_loader):
    with pytest.raises(extension.ExtensionError, match="without CANN"):
        extension.load(require_npu_kernels=True)


def test_compiles_with_fake_tensors(C):
    """The Meta functions carry the ops through torch.compile (fullgraph, dynamic shapes)."""
    def f(pos, q, k, cache, ids):
        torch.ops._C_ascend.rotary_embedding(pos, q, k, 32, cache, True)
        masked, mask = torch.ops._C_ascend.get_masked_input_and_mask(ids, 0, 10, 0, 10, 10)
        return q * 2, k + 1, masked, mask

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True, dynamic=True)
    pos = torch.arange(4)
    cache = torch.randn(8, 32)
    q, k = torch.randn(4, 64), torch.randn(4, 32)
    ids = torch.randint(0, 20, (4,))
    got = compiled(pos, q.clone(), k.clone(), cache, ids)
    want = f(pos, q.clone(), k.clone(), cache, ids)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
