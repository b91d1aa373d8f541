"""pyscorepen: model-based offline RL (ScorePen-MORL, MOPO, COMBO, MOBILE, CDSA) with fused kernels."""
from pyscorepen import ops  # noqa: F401  registers torch.ops.pyscorepen.*

__version__ = "0.1.0"
