"""Suite-wide settings: float64 for accuracy tests (float32 tests request float32 arrays)."""
import jax

jax.config.update("jax_enable_x64", True)
