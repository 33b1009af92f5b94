"""Accelerators sm_jax compiles for without having them, by name: `TARGETS[name]` is a `Target` (its chips, memory,
peaks and how XLA is told about it), `target(name)` looks one up, `Target.devices()` the devices of its topology.

A CUDA target is XLA's `GpuTargetConfig` text proto, written here from the card's published facts (compute
capability, SMs, clock, memory size and bandwidth, L2, shared memory): XLA:GPU compiles for it as it would on the card,
except that it cannot autotune (it picks its heuristic choices; on the card, autotuning may pick other kernels and
workspaces). A TPU target is a libtpu topology (generation and slice shape), compiled by the TPU compiler itself.

The peaks are what the time estimate (`aot.cost`) divides by. They are the float32 peaks, because sm_jax computes in
full float32 (`--precision float32`, docs/gpu.md): on a GPU, the CUDA cores' FP32 rate (not TF32 tensor cores); on a
TPU, the MXU's bfloat16 rate over 6, the passes of XLA's float32 (`HIGHEST`) matmul.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os

from sm_jax.errors import UserError

GIB = 2**30


class TargetError(UserError, ValueError):
    """An unknown target, or a compiler for it that is not installed (one line, user-facing)."""


@dataclasses.dataclass(frozen=True)
class Target:
    """An accelerator (one chip, or a slice / host of several) to compile for.

    Attributes:
      name: registry name (`--target`, `--plan-for`).
      platform: 'cuda' or 'tpu'.
      chips: devices of the topology (the mesh the class axis is sharded over when > 1).
      memory_bytes: device memory per chip.
      fp32_flops: float32 peak per chip (FLOP/s).
      bandwidth: memory bandwidth per chip (bytes/s).
      description: the card or slice, for tables.
      bytes_limit_fraction: the share of a chip's memory JAX lets XLA allocate by default (the GPU's
        XLA_PYTHON_CLIENT_MEM_FRACTION 0.75; a TPU's whole HBM less the runtime's reserve).
      gpu: CUDA: (compute capability, SMs, FP32 lanes per SM, clock GHz, L2 bytes, shared memory per SM,
        shared memory per block opt-in); None for a TPU.
      tpu: TPU: (libtpu topology name, chips per host bounds); None for a GPU.
      interconnect: bytes/s per chip for collectives (NVLink / ICI), for the collective time of a mesh.
    """

    name: str
    platform: str
    chips: int
    memory_bytes: int
    fp32_flops: float
    bandwidth: float
    description: str
    bytes_limit_fraction: float
    gpu: tuple | None = None
    tpu: tuple | None = None
    interconnect: float = 0.0
    family: str = ""  # the chip's name, shared by a target's one- and several-chip forms (default: `name`)

    @property
    def bytes_limit(self) -> int:
        """Device bytes a program may use by default (what `--class-chunk auto` fits 85 % of)."""
        return int(self.memory_bytes * self.bytes_limit_fraction)

    def gpu_target_config(self) -> str:
        """XLA's GpuTargetConfig text proto of a CUDA target."""
        (major, minor), sms, lanes, ghz, l2, smem_core, smem_optin = self.gpu
        return "\n".join([
            "gpu_device_info {",
            f"  cuda_compute_capability {{ major: {major} minor: {minor} }}",
            "  threads_per_block_limit: 1024", "  threads_per_warp: 32", "  shared_memory_per_block: 49152",
            f"  shared_memory_per_block_optin: {smem_optin}", f"  shared_memory_per_core: {smem_core}",
            "  threads_per_core_limit: 2048", f"  core_count: {sms}", f"  fpus_per_core: {lanes}",
            "  block_dim_limit_x: 2147483647", "  block_dim_limit_y: 65535", "  block_dim_limit_z: 65535",
            f"  memory_bandwidth: {int(self.bandwidth)}", f"  l2_cache_size: {l2}", f"  clock_rate_ghz: {ghz}",
            f"  device_memory_size: {self.memory_bytes}", "}",
            'platform_name: "CUDA"',
            "dnn_version_info { major: 9 minor: 10 patch: 0 }",
            f'device_description_str: "{self.description}"', ""])

    def devices(self) -> list:
        """The devices of this target's topology (compile-only: nothing runs on them).

        Raises:
          TargetError: when the compiler for the platform is not installed (`pip install -e ".[aot]"`).
        """
        from jax.experimental import topologies

        try:
            if self.platform == "cuda":
                # the plugin refuses to load without a driver unless told that only compilation is wanted
                os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
                topo = topologies.get_topology_desc(platform="cuda", target_config=self.gpu_target_config(),
                                                    topology=f"1x1x{self.chips}")
            else:
                name, bounds = self.tpu
                quiet_libtpu()
                topo = topologies.get_topology_desc(platform="tpu", topology_name=name, chip_config_name="default",
                                                    chips_per_host_bounds=bounds, num_slices=1)
        except Exception as e:  # noqa: BLE001 - a missing plugin surfaces as several exception types
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            extra = "jax[cuda13]" if self.platform == "cuda" else "jax[tpu]"
            raise TargetError(f"cannot compile for {self.name} ({first}); install its compiler: "
                              f"pip install -e \".[aot]\" (or {extra})") from None
        devices = list(topo.devices)
        if len(devices) != self.chips:
            raise TargetError(f"{self.name}: the topology has {len(devices)} devices, expected {self.chips}")
        return devices


# the module each platform's compiler is (the extra .[aot]: jax-cuda13-plugin and libtpu)
COMPILER_MODULES = {"cuda": "jax_plugins.xla_cuda13", "tpu": "libtpu"}


def compiler_installed(platform: str) -> bool:
    """Whether the compiler of `platform` ('cuda' or 'tpu') is installed, without loading it."""
    try:
        return importlib.util.find_spec(COMPILER_MODULES[platform]) is not None
    except ModuleNotFoundError:  # find_spec imports the parent package, and without the plugin there is no jax_plugins
        return False


def quiet_libtpu() -> None:
    """Environment that lets libtpu compile on a host with no TPU: one process at a time is libtpu's rule (a lock
    file) unless told otherwise (test workers compile in parallel), and no metadata server to ask."""
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-1")
    os.environ.setdefault("TPU_WORKER_ID", "0")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _h100(chips: int) -> Target:
    # H100 SXM5 80 GB: sm_90, 132 SMs x 128 FP32 lanes at 1.98 GHz (66.9 TFLOP/s FP32), HBM3 3.35 TB/s, 50 MB L2,
    # 228 KB shared memory per SM; NVLink 4: 450 GB/s per direction
    return Target(f"h100x{chips}" if chips > 1 else "h100", "cuda", chips, 81559 * 2**20, 66.9e12, 3.35e12,
                  "NVIDIA H100 80GB HBM3", 0.75, gpu=((9, 0), 132, 128, 1.98, 50 * 2**20, 233472, 232448),
                  interconnect=450e9, family="h100")


def _v5e(x: int, y: int) -> Target:
    # TPU v5e: 16 GiB HBM2e at 819 GB/s, 197 TFLOP/s bfloat16 (float32: /6), ICI 4 links x 50 GB/s (one way);
    # hosts of up to 2x2 chips
    name = "v5e" if x * y == 1 else f"v5e-{x}x{y}"
    return Target(name, "tpu", x * y, 16 * GIB, 197e12 / 6, 819e9, f"TPU v5e {x}x{y}", 0.98,
                  tpu=(f"v5e:{x}x{y}", (min(x, 2), min(y, 2), 1)), interconnect=100e9, family="v5e")


TARGETS: dict[str, Target] = {t.name: t for t in (
    _h100(1),
    _h100(8),
    # A100 SXM4 40 GB: sm_80, 108 SMs x 64 FP32 lanes at 1.41 GHz (19.5 TFLOP/s), HBM2 1.555 TB/s, 40 MB L2
    Target("a100-40", "cuda", 1, 40536 * 2**20, 19.5e12, 1.555e12, "NVIDIA A100-SXM4-40GB", 0.75,
           gpu=((8, 0), 108, 64, 1.41, 40 * 2**20, 167936, 166912), interconnect=300e9),
    # H200 (the card benchmarks/gpu.sh meets): H100's chip with 141 GB HBM3e at 4.8 TB/s
    Target("h200", "cuda", 1, 143771 * 2**20, 66.9e12, 4.8e12, "NVIDIA H200", 0.75,
           gpu=((9, 0), 132, 128, 1.98, 50 * 2**20, 233472, 232448), interconnect=450e9),
    # L4 24 GB (the 24 GB class of card, as an RTX 4090's memory): sm_89, 58 SMs x 128 FP32 lanes at 2.04 GHz
    # (30.3 TFLOP/s FP32), GDDR6 300 GB/s, 48 MB L2, 100 KB shared memory per SM; PCIe only
    Target("l4", "cuda", 1, 23034 * 2**20, 30.3e12, 300e9, "NVIDIA L4", 0.75,
           gpu=((8, 9), 58, 128, 2.04, 48 * 2**20, 102400, 101376), interconnect=32e9),
    _v5e(1, 1),
    _v5e(2, 2),
    _v5e(4, 4),
    # TPU v6e (Trillium): 32 GiB HBM at 1.64 TB/s, 918 TFLOP/s bfloat16
    Target("v6e", "tpu", 1, 32 * GIB, 918e12 / 6, 1.64e12, "TPU v6e 1x1", 0.98, tpu=("v6e:1x1", (1, 1, 1)),
           interconnect=200e9),
)}


def target(name: str, chips: int | None = None) -> Target:
    """TARGETS[name], or with `chips` the target of that chip with that many chips (`h100`, 8 -> `h100x8`).

    Raises:
      TargetError: (one line) for an unknown name or chip count.
    """
    if name not in TARGETS:
        raise TargetError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}")
    t = TARGETS[name]
    if chips is None or chips == t.chips:
        return t
    family = [u for u in TARGETS.values() if (u.family or u.name) == (t.family or t.name)]
    for u in family:
        if u.chips == chips:
            return u
    raise TargetError(f"{name}: no target of {chips} chips; {', '.join(f'{u.name} ({u.chips})' for u in family)}")


def for_device(kind: str) -> Target | None:
    """The one-chip target of a live device by its `device_kind` ('NVIDIA H200'), or None for one not described."""
    return next((t for t in TARGETS.values() if t.chips == 1 and t.description == kind), None)
