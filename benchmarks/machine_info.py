"""The machine a benchmark ran on, for the JSON it writes (shared by the benchmark scripts)."""
import os
import platform
from pathlib import Path


def machine() -> dict:
    """Platform, CPU model and count, load average at the start, JAX/NumPyro versions, backend,
    devices, XLA flags and precision."""
    import jax
    import numpyro

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "jax": jax.__version__,
        "numpyro": numpyro.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "x64": bool(jax.config.jax_enable_x64),
    }
