"""What an optimised HLO module (a compiled program's `as_text()`) costs: flops, bytes and kernels per execution, the
collectives of a mesh, and a roofline time, read off the program XLA will run.

The model, per kernel (an instruction of a computation the device executes: the entry, loop bodies, conditional
branches; not the instructions fused inside a kernel):
- flops: those of its matrix products and convolutions (dots and convolutions, inside a fusion too; cuDNN's
  convolutions and cuBLAS's gemms), 2 per multiply-add, a convolution's window taps that fall on padding or on an
  input dilation's holes not counted (`window_share`); elementwise arithmetic is not counted (it is memory-bound:
  at these shapes its bytes, not its flops, set its time);
- bytes: what it reads and writes in device memory: its operands and its result, except that an operand a fusion
  only slices (a gather of real images from the training set, a dynamic-slice of a scanned array) counts the
  slices' bytes, and a buffer updated in place (dynamic-update-slice) counts the update;
- time: max(flops / peak, bytes / bandwidth), a roofline: kernels one after another, each at the peak of what bounds
  it, nothing from caches (small tensors that stay in L2 count as DRAM traffic);
- a while loop counts its body `trip_count` times (XLA:GPU's `known_trip_count`, or XLA:TPU's `i < N` condition;
  once where neither is found), a conditional its most expensive branch, a collective its result's bytes (over the
  interconnect, apart from the roofline).
Left out: kernel launch gaps (`kernels` counts the launches, for the caller's gap per launch), autotuning (the
kernels compiled without the card are XLA's heuristic picks), overlap of kernels.
"""
from __future__ import annotations

import dataclasses
import math
import re

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
DTYPE_BYTES = {"f32": 4, "s32": 4, "u32": 4, "f16": 2, "bf16": 2, "f64": 8, "s64": 8, "u64": 8, "pred": 1, "s8": 1,
               "u8": 1, "s16": 2, "u16": 2, "c64": 8, "f8e4m3fn": 1, "f8e5m2": 1, "s4": 1, "u4": 1}
# instructions that launch nothing and move nothing
FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all", "partition-id", "replica-id",
        "opt-barrier", "add-dependency", "iota", "copy-done", "send-done", "recv-done", "all-reduce-done",
        "all-gather-done", "collective-permute-done", "async-done", "async-update", "domain"}
SLICING = {"slice", "dynamic-slice", "gather", "bitcast", "get-tuple-element"}
CONV_TARGETS = ("__cudnn$conv",)  # cuDNN's forward, backward-input, backward-filter (and fused) convolutions
GEMM_TARGETS = ("__cublas$gemm", "__cublas$lt$matmul")

_SHAPE = re.compile(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.+?) ([a-z][a-z0-9\-]*)\(")
_HEADER = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")


def shapes_of(text: str) -> list[tuple[str, tuple[int, ...]]]:
    """(dtype, dims) of every array in an HLO type: `f32[10,3]{1,0}` or a tuple `(f32[2], s32[])`."""
    return [(d, tuple(int(x) for x in dims.split(",") if x)) for d, dims in _SHAPE.findall(text) if d in DTYPE_BYTES]


def nbytes(shapes) -> int:
    return sum(DTYPE_BYTES[d] * math.prod(dims) for d, dims in shapes)


@dataclasses.dataclass
class Instr:
    name: str
    op: str
    shapes: list  # of the result: [(dtype, dims)]
    operands: list[str]
    attrs: str  # the text after the operand list
    index: int = -1  # a parameter's number
    args: str = ""  # the operand list as written (a constant's value)

    @property
    def bytes(self) -> int:
        return nbytes(self.shapes)


@dataclasses.dataclass
class Cost:
    """Per execution: flops, bytes moved, kernels launched, the roofline seconds, collectives {kind: [n, bytes]}."""

    flops: float = 0.0
    bytes: float = 0.0
    kernels: int = 0
    seconds: float = 0.0
    collectives: dict = dataclasses.field(default_factory=dict)
    grouped_flops: float = 0.0  # of grouped convolutions over image-sized windows (`is_grouped`, `image_window`)
    loop_trips: int = 0  # while-loop iterations (each a round trip to the host on a GPU)

    def add(self, other: Cost, times: int = 1) -> None:
        self.flops += times * other.flops
        self.bytes += times * other.bytes
        self.kernels += times * other.kernels
        self.seconds += times * other.seconds
        self.grouped_flops += times * other.grouped_flops
        self.loop_trips += times * other.loop_trips
        for k, (n, b) in other.collectives.items():
            c = self.collectives.setdefault(k, [0, 0])
            c[0] += times * n
            c[1] += times * b


def _split_operands(rest: str) -> tuple[str, str]:
    """`a, b), attrs...` (the text after an instruction's opening parenthesis) -> (operands, attrs)."""
    depth = 0
    for i, ch in enumerate(rest):
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            if depth == 0:
                return rest[:i], rest[i + 1:]
            depth -= 1
    return rest, ""


def parse(hlo: str) -> tuple[dict[str, list[Instr]], str]:
    """An HLO module's computations {name: instructions} and the entry computation's name."""
    comps: dict[str, list[Instr]] = {}
    entry, body = "", None
    for line in hlo.splitlines():
        if not line.startswith(" "):
            m = _HEADER.match(line)
            if m:
                body = comps[m.group(1)] = []
                entry = m.group(1) if line.startswith("ENTRY") else entry
            continue
        m = _INSTR.match(line)
        if m is None or body is None:
            continue
        operands, attrs = _split_operands(line[m.end():])
        names = re.findall(r"%([\w.\-]+)", operands) or _bare_names(operands)
        index = int(operands) if m.group(3) == "parameter" and operands.strip().isdigit() else -1
        body.append(Instr(m.group(1), m.group(3), shapes_of(m.group(2)), names, attrs, index, operands))
    return comps, entry


def _bare_names(operands: str) -> list[str]:
    # newer printers write operands without '%': `add(x, y)`; a typed operand is `f32[] x`
    return [t.split()[-1] for t in operands.split(",") if t.strip() and not t.strip()[0].isdigit()]


def _attr(attrs: str, key: str) -> str | None:
    m = re.search(rf"\b{key}=([^,\s]+(?:\{{[^}}]*\}})?)", attrs)
    return m.group(1) if m else None


def _called(attrs: str, *keys: str) -> list[str]:
    out = []
    for key in keys:
        for m in re.finditer(rf"\b{key}=(\{{[^}}]*\}}|%?[\w.\-]+)", attrs):
            out += re.findall(r"%?([\w.\-]+)", m.group(1).strip("{}"))
    return out


def conv_flops(out_dims: tuple[int, ...], kernel_dims: tuple[int, ...], dim_labels: str) -> float:
    """2 x the multiply-adds of a convolution: each output element sums kernel elements / output features of them
    (grouped and batch-grouped convolutions included: their kernel holds the per-group input features).

    Args:
      out_dims: the forward convolution's output; kernel_dims: its kernel; dim_labels: XLA's `lhs_rhs->out`.
    """
    rhs = dim_labels.split("_")[1].split("->")[0]
    out_features = kernel_dims[rhs.index("o")]
    return 2.0 * math.prod(out_dims) * math.prod(kernel_dims) / out_features


def window_share(attrs: str, lhs_dims: tuple[int, ...], out_dims: tuple[int, ...], dim_labels: str) -> float:
    """The share of a convolution's (output position, window tap) pairs, over its spatial dimensions, that meet input
    values rather than padding or the holes of an input dilation. A gradient's convolution pads its input by nearly
    the window (a 16x16 window over a 3x3 input padded by 14 meets values at 9 of its 256 taps per output), and
    XLA:TPU writes a convolution batched over classes as one over an extra dimension dilated by the class count (a
    window of 10 over an input dilated by 10 meets one value per output): only those pairs multiply.

    Args:
      attrs: the instruction's attributes (its `window={size=... stride=... pad=... lhs_dilate=... rhs_dilate=...}`);
      lhs_dims, out_dims: the forward convolution's input and output; dim_labels: XLA's `lhs_rhs->out`.
    """
    window = re.search(r"window=\{([^}]*)\}", attrs)
    if not window or not lhs_dims or not out_dims:
        return 1.0

    def field(name: str, n: int, default: int) -> list:
        m = re.search(rf"\b{name}=([\d_x]+)", window.group(1))
        return [tuple(int(v) for v in part.split("_")) for part in m.group(1).split("x")] if m else [(default,)] * n

    sizes = [v[0] for v in field("size", 0, 1)]
    n = len(sizes)
    strides, lhs_d, rhs_d = ([v[0] for v in field(f, n, 1)] for f in ("stride", "lhs_dilate", "rhs_dilate"))
    pads = [v if len(v) == 2 else (0, 0) for v in field("pad", n, 0)]
    lhs_labels, rest = dim_labels.split("_")
    out_labels = rest.split("->")[1]
    share = 1.0
    for i in range(n):
        if str(i) not in lhs_labels or str(i) not in out_labels:
            return 1.0
        length, outs = lhs_dims[lhs_labels.index(str(i))], out_dims[out_labels.index(str(i))]
        extent = (length - 1) * lhs_d[i]  # the last input value's position in the dilated input
        hits = sum(1 for o in range(outs) for t in range(sizes[i])
                   if 0 <= (q := o * strides[i] + t * rhs_d[i] - pads[i][0]) <= extent and q % lhs_d[i] == 0)
        share *= hits / (outs * sizes[i])
    return share


def dot_flops(out_dims: tuple[int, ...], lhs_dims: tuple[int, ...], contracting: list[int]) -> float:
    return 2.0 * math.prod(out_dims) * math.prod(lhs_dims[i] for i in contracting)


class Module:
    """The cost of an optimised HLO module on a device of `peak_flops` FLOP/s and `bandwidth` bytes/s."""

    def __init__(self, hlo: str, peak_flops: float = 1.0, bandwidth: float = 1.0):
        self.comps, self.entry = parse(hlo)
        self.by_name = {i.name: i for c in self.comps.values() for i in c}
        self.peak, self.bandwidth = peak_flops, bandwidth
        self._memo: dict[str, Cost] = {}

    def cost(self) -> Cost:
        """Per execution of the entry computation."""
        return self.computation(self.entry)

    def computation(self, name: str) -> Cost:
        if name in self._memo:
            return self._memo[name]
        total = Cost()
        for ins in self.comps.get(name, []):
            total.add(*self.instruction(ins))
        self._memo[name] = total
        return total

    def instruction(self, ins: Instr) -> tuple[Cost, int]:
        """(the cost of one execution of `ins`, how many times it runs per execution of its computation)."""
        op = ins.op.removesuffix("-start")
        if op == "while":
            trips, loop = self.trip_count(ins), Cost()
            loop.add(self.computation(_called(ins.attrs, "body")[0]), trips)
            loop.loop_trips += trips
            return loop, 1
        if op == "conditional":
            branches = _called(ins.attrs, "branch_computations", "true_computation", "false_computation")
            costs = [self.computation(b) for b in branches]
            return max(costs, key=lambda c: c.seconds, default=Cost()), 1
        if op == "call":
            return self.computation(_called(ins.attrs, "to_apply")[0]), 1
        if op in COLLECTIVES:
            return Cost(collectives={op: [1, ins.bytes]}), 1
        if op in FREE or ins.op.endswith("-done"):
            return Cost(), 1
        flops = self.flops(ins)
        moved = self.moved(ins)
        fused = [i for c in _called(ins.attrs, "calls") for i in self.comps.get(c, [])] if op == "fusion" else [ins]
        grouped = any(i.op in ("convolution", "custom-call") and is_grouped(i) and image_window(i) for i in fused)
        return Cost(flops, moved, 1, max(flops / self.peak, moved / self.bandwidth),
                    grouped_flops=flops if grouped else 0.0), 1

    def trip_count(self, ins: Instr) -> int:
        """A while loop's iterations: XLA:GPU's `known_trip_count`; else (XLA:TPU writes none) read off the loop's
        condition `counter < N` and the counter's initial constant; 1 where neither is found."""
        t = re.search(r'"known_trip_count":\{"n":"(\d+)"', ins.attrs)
        if t:
            return int(t.group(1))
        cond = self.comps.get(next(iter(_called(ins.attrs, "condition")), ""), [])
        root = next((i for i in reversed(cond) if i.op == "compare" and "direction=LT" in i.attrs), None)
        if root is None or len(root.operands) != 2:
            return 1
        local = {i.name: i for i in cond}
        counter, bound = (local.get(o) for o in root.operands)
        if bound is None or bound.op != "constant" or counter is None or counter.op != "get-tuple-element":
            return 1
        start = 0
        init = self.by_name.get(ins.operands[0]) if ins.operands else None
        slot = re.search(r"index=(\d+)", counter.attrs)
        if init is not None and init.op == "tuple" and slot and int(slot.group(1)) < len(init.operands):
            first = self.by_name.get(init.operands[int(slot.group(1))])
            if first is not None and first.op == "constant":
                start = int(float(first.args))
        return max(int(float(bound.args)) - start, 0)

    def _shapes(self, name: str) -> list:
        """The result shapes of the instruction `name` ([] for an unknown one)."""
        ins = self.by_name.get(name)
        return ins.shapes if ins is not None else []

    def _operand_dims(self, ins: Instr, i: int) -> tuple[int, ...]:
        shapes = self._shapes(ins.operands[i])
        return shapes[0][1] if shapes else ()

    def flops(self, ins: Instr) -> float:
        """Matrix-product and convolution flops of a kernel (a fusion's: those of its fused computation)."""
        if ins.op == "fusion":
            return sum(self.flops(i) for c in _called(ins.attrs, "calls") for i in self.comps.get(c, []))
        if ins.op == "convolution":
            return self._conv(ins, self._operand_dims(ins, 0), self._operand_dims(ins, 1), ins.shapes[0][1])
        if ins.op == "dot":
            lhs = self._operand_dims(ins, 0)
            dims = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", ins.attrs)
            return dot_flops(ins.shapes[0][1], lhs, [int(d) for d in dims.group(1).split(",") if d] if dims else [])
        if ins.op == "custom-call":
            target = _attr(ins.attrs, "custom_call_target") or ""
            target = target.strip('"')
            if target.startswith(CONV_TARGETS):  # (input, kernel, output) of the forward convolution
                if "BackwardFilter" in target:  # (input, output gradient) -> kernel
                    return self._conv(ins, self._operand_dims(ins, 0), ins.shapes[0][1], self._operand_dims(ins, 1))
                if "BackwardInput" in target:  # (output gradient, kernel) -> input gradient
                    return self._conv(ins, ins.shapes[0][1], self._operand_dims(ins, 1), self._operand_dims(ins, 0))
                return self._conv(ins, self._operand_dims(ins, 0), self._operand_dims(ins, 1), ins.shapes[0][1])
            if target.startswith(GEMM_TARGETS):
                dims = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', ins.attrs)
                contracting = [int(d) for d in re.findall(r"\d+", dims.group(1))] if dims else []
                return dot_flops(ins.shapes[0][1], self._operand_dims(ins, 0), contracting)
        return 0.0

    @staticmethod
    def _conv(ins: Instr, lhs: tuple, kernel: tuple, out: tuple) -> float:
        labels = _attr(ins.attrs, "dim_labels")
        return conv_flops(out, kernel, labels) * window_share(ins.attrs, lhs, out, labels)

    def moved(self, ins: Instr) -> float:
        """Bytes a kernel reads and writes (see the module's docstring for slices and in-place updates)."""
        if ins.op != "fusion":
            if ins.op == "dynamic-update-slice":  # in place: reads and writes the update
                return 2.0 * nbytes(self._shapes(ins.operands[1]))
            if ins.op in ("dynamic-slice", "slice", "gather"):
                return 2.0 * ins.bytes
            return float(ins.bytes + sum(nbytes(self._shapes(o)) for o in dict.fromkeys(ins.operands)))
        fused = [i for c in _called(ins.attrs, "calls") for i in self.comps.get(c, [])]
        params = {i.index: i for i in fused if i.op == "parameter"}
        users: dict[str, list[Instr]] = {}
        for i in fused:
            for o in i.operands:
                users.setdefault(o, []).append(i)
        # the fused computation's in-place updates of one of its parameters
        updates = [i for i in fused if i.op == "dynamic-update-slice" and i.operands and i.operands[0] in
                   {p.name for p in params.values()}]
        in_place = {i.operands[0] for i in updates}
        total = 0.0
        for n, operand in enumerate(ins.operands):
            p = params.get(n)
            full = nbytes(self._shapes(operand))
            if p is None:
                total += full
                continue
            used = users.get(p.name, [])
            if p.name in in_place:
                continue  # aliased with the result, which counts the update
            if used and all(u.op in SLICING for u in used):
                total += min(full, sum(u.bytes for u in used))
            else:
                total += full
        written = ins.bytes
        if updates:  # in-place results write their updates only
            written -= sum(i.bytes for i in updates)
            written += sum(nbytes(self._shapes(i.operands[1])) for i in updates)
        return total + max(written, 0)


def collectives(hlo: str) -> dict:
    """Per execution of the entry computation: {kind: [count, bytes]} of the collectives of an optimised HLO module,
    while-loop bodies counted `Module.trip_count` times."""
    return {k: v for k, v in Module(hlo).cost().collectives.items() if v[0]}


def is_grouped(ins: Instr) -> bool:
    """Whether a convolution (XLA's op or a cuDNN call) is grouped: feature_group_count or batch_group_count > 1
    (what vmap makes of a convolution whose input and kernel both carry the vmapped axis)."""
    return any(int(n) > 1 for n in re.findall(r"\b(?:feature|batch)_group_count=(\d+)", ins.attrs))


KERNEL_WINDOW = 7  # the largest kernel of the zoo's convolutions but AlexNet's first; a wider window spans a map


def image_window(ins: Instr) -> bool:
    """Whether a convolution's window spans a feature map rather than a kernel (wider than KERNEL_WINDOW): XLA's
    form of a kernel gradient (the map of activations convolved with the map of output gradients) and of its
    derivatives. Grouped, these are what cuDNN runs far below its rate (docs/gpu.md); grouped convolutions over a
    kernel's window (networks trained together) run near the plain rate."""
    m = re.search(r"window=\{size=([\dx]+)", ins.attrs)
    return bool(m) and max(int(v) for v in m.group(1).split("x")) > KERNEL_WINDOW


def census(text: str) -> dict[str, int]:
    """The kernels an optimised HLO module calls, as written (a loop body's once): every library call by its
    `custom_call_target` (cuDNN's convolutions, cuBLAS's gemms), XLA's own `convolution` and `dot` ops (a TPU's,
    or those XLA emits itself), fusions, and `grouped convolutions` among the convolutions (`is_grouped`)."""
    out: dict[str, int] = {}
    for comp in parse(text)[0].values():
        for ins in comp:
            name = None
            if ins.op == "custom-call":
                name = (_attr(ins.attrs, "custom_call_target") or "?").strip('"')
            elif ins.op in ("convolution", "dot", "fusion"):
                name = ins.op
            if name is None:
                continue
            out[name] = out.get(name, 0) + 1
            if (ins.op == "convolution" or name.startswith(CONV_TARGETS)) and is_grouped(ins):
                out["grouped convolutions"] = out.get("grouped convolutions", 0) + 1
    return dict(sorted(out.items()))
