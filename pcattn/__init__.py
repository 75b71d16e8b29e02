"""pcattn: attention on point clouds, graphs and images as one message-passing operator.

.. math::
    y_i = \\frac{1}{C_i} \\sum_{j \\in \\mathcal N(i)} f(x_i, x_j, p_i - p_j)\\, g(x_j)
"""

from . import graphs, nn, ops

__version__ = "0.1.0"
__all__ = ["graphs", "nn", "ops", "__version__"]
