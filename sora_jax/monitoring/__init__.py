"""Progress bars, TensorBoard/text metric logs and plots.

from sora_jax.monitoring import MetricWriter, progress_bar, plot_curves
"""

from sora_jax.monitoring.plots import plot_curves, read_metrics
from sora_jax.monitoring.progress import progress_bar
from sora_jax.monitoring.writer import MetricWriter, format_line

__all__ = ["MetricWriter", "format_line", "progress_bar", "plot_curves", "read_metrics"]
