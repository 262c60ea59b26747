"""Software prefetch of whole array rows for the numba kernels (optional dependency ``numba``).

:func:`prefetch_row` ``(a, i)`` asks the CPU to bring row ``i`` of a C-contiguous 2-D array
into the L2 cache: one ``llvm.prefetch`` (read, locality 2: ``prefetcht1`` on x86-64; a no-op
where the target has no prefetch instruction) per 64-byte line of the row. It changes no
value, only when the data arrive.

Why: a vnode link block (:mod:`kernels.backends.vnode`) is 2304 bytes, and a site of the
SU(3) force does ~3.5 us of arithmetic on ~40 such blocks. Once the lattice leaves the
last-level cache (16^4 local on the dev VM, whose L3 slice holds ~10 MB), the hardware
prefetcher, which runs a few lines ahead of the demand stream, left the DRAM reads of each new
block serialised with the arithmetic (measured on the dev VM, 2026-12-04: per outer site, the
action read only from its own links cost 1.15 us at 8^4 and 1.87 us at 16^4). The kernels
therefore prefetch, two sites ahead, the blocks the sweep touches for the first time.
Locality 3 (``prefetcht0``, into L1) was slower than none; locality 1 and 2 alike.

``TRIVHMC_PREFETCH=0`` in the environment (read when the generated kernel source is built)
compiles the kernels with a no-op instead (:data:`NOOP_SOURCE`; a different source, so
numba's disk cache keeps the two apart): for A/B measurements and as a way out.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from parallel.settings import flag

#: cache line size assumed for the prefetch stride (x86-64, Arm Neoverse, Sapphire Rapids)
LINE = 64
#: ``llvm.prefetch`` locality: 2 = keep in L2 (``prefetcht1``)
LOCALITY = 2


def enabled() -> bool:
    """False when ``TRIVHMC_PREFETCH=0`` (kernels built with the no-op)."""
    return flag("TRIVHMC_PREFETCH", True)


#: generated-source stand-in for :func:`prefetch_row` when prefetching is off
NOOP_SOURCE = '''
@njit(inline='always')
def prefetch_row(a, i):
    """No-op (TRIVHMC_PREFETCH=0)."""
    return None
'''

#: generated-source import of :func:`prefetch_row`
IMPORT_SOURCE = "\nfrom kernels.backends.prefetch import prefetch_row\n"


def source() -> str:
    """The line(s) that define ``prefetch_row`` in a generated kernel module."""
    return IMPORT_SOURCE if enabled() else NOOP_SOURCE


@intrinsic
def prefetch_row(typingctx, arr, row):
    """Prefetch (read, into L2) every 64-byte line of row ``row`` of the C-contiguous 2-D
    array ``arr``; no bounds check (the caller passes a valid row)."""
    if not isinstance(arr, types.Array) or arr.ndim != 2 or not isinstance(row, types.Integer):
        return None
    sig = types.void(arr, row)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        zero = context.get_constant(types.intp, 0)
        ptr = cgutils.get_item_pointer(
            context, builder, aryty, ary, [args[1], zero], wraparound=False
        )
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p], fnty)
        base = builder.bitcast(ptr, i8p)
        rowbytes = builder.extract_value(ary.strides, 0)
        line = context.get_constant(types.intp, LINE)
        nlines = builder.udiv(
            builder.add(rowbytes, context.get_constant(types.intp, LINE - 1)), line
        )
        with cgutils.for_range(builder, nlines) as loop:
            p = builder.gep(base, [builder.mul(loop.index, line)])
            builder.call(fn, [p, i32(0), i32(LOCALITY), i32(1)])
        return context.get_dummy_value()

    return sig, codegen
