"""Constants shared by the native-extension tests."""

import torch

# Output tolerances for a result computed in fp32 and stored in `dtype`, compared with float64.
TOLS = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=4e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=3e-2, rtol=1.6e-2),
}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
